"""Fuzzing the config loader: whatever the file or the overrides hold, ``load_config`` (and the
component check ``rats validate`` adds) either succeeds or raises a RatsError — never anything a
user would see as a traceback."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rats_core.config import check_components, load_config
from rats_core.errors import RatsError

from rats_reliability import config_dict

#: fixed examples by default so CI is deterministic; RATS_FUZZ_EXAMPLES=5000 RATS_FUZZ_RANDOM=1 for a long hunt
SETTINGS = settings(
    max_examples=int(os.environ.get("RATS_FUZZ_EXAMPLES", "150")),
    derandomize=not os.environ.get("RATS_FUZZ_RANDOM"),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

SECTIONS = ["seed", "output_dir", "backbone", "student", "teacher", "rewards", "gate", "horizons", "loss",
            "train", "data", "deepspeed", "eval"]
#: every public dotted key, plus a few list indices, for overrides that reach deep into the schema
KEYS = [
    "seed", "output_dir", "backbone", "backbone.name", "backbone.path", "backbone.resolution",
    "backbone.interpolation", "student.steps", "student.grad_steps", "student.lora", "student.lora.rank",
    "student.lora.target_modules", "teacher.kind", "teacher.steps", "teacher.ema_decay", "teacher.alignment",
    "rewards", "rewards.0", "rewards.0.name", "rewards.0.weight", "rewards.0.normalize", "rewards.0.std",
    "rewards.0.target", "gate", "gate.name", "gate.tau", "gate.margin", "horizons.name", "horizons.steps",
    "loss.alpha", "train.steps", "train.batch_size", "train.lr", "train.adam_betas", "train.resume",
    "train.precision", "train.device", "data.prompts", "data.eval_prompts", "deepspeed",
    "deepspeed.zero_optimization", "deepspeed.zero_optimization.stage", "eval.metrics", "eval.metrics.0",
    "eval.steps", "eval.prompts",
]

scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20) | st.sampled_from(["toy", "toy-brightness", "sigmoid", "hard", "all", "ema", "auto",
                                               "fixed", "bf16", "", "0", "-1", "1e400", "~", "null"])
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.sampled_from(SECTIONS + ["name", "stage", "zero_optimization"]),
                      children, max_size=4),
    max_leaves=12,
)
documents = st.dictionaries(st.sampled_from(SECTIONS) | st.text(max_size=8), values, max_size=8)


def _leaf_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _leaf_paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _leaf_paths(v, prefix + (i,))
    return out


@st.composite
def mutated_configs(draw) -> dict[str, Any]:
    """A valid config with a few keys replaced, deleted or added: gets past the first checks."""
    data = config_dict()
    for _ in range(draw(st.integers(1, 3))):
        paths = _leaf_paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = data
        for p in path[:-1]:
            parent = parent[p]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace" or isinstance(parent, list):
            parent[path[-1]] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        else:
            parent[draw(st.text(max_size=8))] = draw(values)
    return data


def _load(text: str | bytes, overrides: list[str] | None = None) -> None:
    """Write ``text`` as a config file and do what ``rats validate`` does with it; a RatsError is an
    answer, anything else escapes and fails the test."""
    with tempfile.TemporaryDirectory(prefix="rats_fuzz_") as folder:
        path = Path(folder) / "cfg.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        try:
            cfg = load_config(path, overrides)
            check_components(cfg, source=str(path))
        except RatsError as exc:
            assert str(exc).strip(), "a RatsError with an empty message"


@SETTINGS
@given(documents)
def test_random_yaml_documents(doc):
    _load(yaml.safe_dump(doc, allow_unicode=True))


@SETTINGS
@given(mutated_configs())
@example(config_dict(deepspeed={"zero_optimization": 5}))
@example(config_dict(deepspeed={"zero_optimization": {"stage": {"a": 1}}}))
@example(config_dict(output_dir="a\x00b"))
def test_mutated_valid_configs(doc):
    _load(yaml.safe_dump(doc, allow_unicode=True))


@SETTINGS
@given(st.text(max_size=400))
@example("a: &a [*a]\nb: *a\n")
@example("backbone: &b {name: toy, x: *b}\nrewards: [{name: toy-brightness}]\n")
@example("!!python/object/apply:os.system ['true']\n")
@example("seed: !!binary AAEC\n")
@example("seed: 2020-01-01\n")
@example("? [a, b]\n: 1\n")
@example("%YAML 1.1\n---\n")
@example("--- 1\n--- 2\n")
@example("\ufeffbackbone: {name: toy}\n")
def test_random_text_files(text):
    _load(text)


@SETTINGS
@given(st.binary(max_size=400))
@example(b"\xff\xfe\x00\x00")
@example(b"\x00\x00\x00")
@example("backbone: {name: caf\xe9}".encode("latin-1"))
def test_random_bytes_files(data):
    _load(data)


overrides = st.lists(
    st.text(max_size=30)
    | st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS) | st.text(max_size=10), st.text(max_size=30))
    | st.builds(lambda k, v: f"{k}={json.dumps(v)}", st.sampled_from(KEYS), values),
    max_size=4,
)


@SETTINGS
@given(overrides)
@example(["deepspeed.zero_optimization=5"])
@example(["rewards.0=&a [*a]"])
@example(["train.steps=!!python/object/apply:os.system ['true']"])
@example(["rewards.99.weight=1"])
@example(["rewards.-1.weight=1"])
@example(["seed.x=1"])
@example(["data.prompts.0=x"])
@example(["=", "==", "a=b=c"])
def test_random_overrides(items):
    _load(yaml.safe_dump(config_dict(output_dir="run")), items)
