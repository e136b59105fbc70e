"""The experiment config (rats_core/config/) and ``rats validate``.

User mistakes must come out of the CLI as exit status 2 and a one-block ``error:`` message that
names the file or key — never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rats_core.cli import main
from rats_core.config import RatsConfig, apply_overrides, load_config, validate_config
from rats_core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- loading


def test_valid_config_loads_with_defaults(toy_config):
    cfg = load_config(toy_config)
    assert isinstance(cfg, RatsConfig)
    assert (cfg.backbone.name, cfg.backbone.resolution, cfg.backbone.path) == ("toy", 8, None)
    assert cfg.backbone.options == {"resolution": 8}
    assert (cfg.student.steps, cfg.teacher.steps, cfg.teacher.kind) == (2, 8, "ema")
    assert cfg.gate.name == "sigmoid" and cfg.gate.options == {"tau": 0.5}
    assert cfg.horizons.name == "all" and cfg.horizons.options == {}
    assert [(r.name, r.weight, r.normalize) for r in cfg.rewards] == [("toy-brightness", 1.0, "none")]
    assert cfg.rewards[0].options == {}  # weight/normalize/mean/std are not reward options
    # untouched sections take their defaults
    assert cfg.loss.alpha == 1.0 and cfg.loss.beta == 1.0
    assert cfg.teacher.alignment == "superset" and cfg.student.grad_steps == 1
    assert cfg.deepspeed == {"zero_optimization": {"stage": 0}}
    assert cfg.base_dir == toy_config.parent.resolve()
    assert cfg.resolve_path("prompts.txt") == toy_config.parent.resolve() / "prompts.txt"
    assert cfg.resolve_path("/abs/p.txt") == Path("/abs/p.txt")


def test_config_dict_round_trip(toy_config):
    cfg = load_config(toy_config)
    again = validate_config(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()


def test_minimal_config_needs_only_backbone_and_rewards(write_config):
    cfg = load_config(write_config("backbone: {name: toy}\nrewards: [{name: toy-brightness}]\n"))
    assert cfg.gate.name == "sigmoid" and cfg.horizons.name == "all"
    assert (cfg.student.steps, cfg.teacher.steps) == (4, 50)


# ----------------------------------------------------------------------------- overrides


def test_overrides(toy_config):
    cfg = load_config(toy_config, [
        "gate.name=hard",
        "train.steps=10",
        "rewards=[{name: toy-brightness, weight: 1.0}, {name: toy-smoothness, weight: 0.5}]",
        "rewards.1.weight=2",
        "student.lora.rank=4",  # creates the missing section
        "train.progress=false",  # values are YAML
        "data.prompts=[a cat, a dog]",
    ])
    assert cfg.gate.name == "hard" and cfg.gate.options == {}  # sigmoid's tau dropped: hard does not take it
    assert cfg.train.steps == 10 and cfg.train.progress is False
    assert [(r.name, r.weight) for r in cfg.rewards] == [("toy-brightness", 1.0), ("toy-smoothness", 2.0)]
    assert cfg.student.lora is not None and cfg.student.lora.rank == 4
    assert cfg.data.prompts == ["a cat", "a dog"]


def test_apply_overrides_unit():
    data = {"a": {"b": 1}, "l": [{"w": 1}, {"w": 2}]}
    apply_overrides(data, ["a.b=2", "a.c.d=x", "l.1.w=3.5", "e=", "a.b=null"])
    assert data == {"a": {"b": None, "c": {"d": "x"}}, "l": [{"w": 1}, {"w": 3.5}], "e": None}


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.steps", "expected key=value"),
        ("=3", "is not a dotted key"),
        ("a..b=1", "is not a dotted key"),
        ("l.5.w=1", r"'l\.5' indexes a list of 1 entries"),
        ("l.x=1", r"'l\.x' indexes a list"),
        ("a.b.c=1", r"'a\.b' is not a section"),
        ("a=[1", "cannot parse the value"),
    ],
)
def test_apply_overrides_errors(override, match):
    with pytest.raises(ConfigError, match=match) as exc:
        apply_overrides({"a": {"b": 1}, "l": [{"w": 1}]}, [override])
    assert override in str(exc.value)


# ----------------------------------------------------------------------------- `rats validate`


def _validate(capsys, *argv):
    rc = main(["validate", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_validate_ok(capsys, toy_config):
    rc, out, err = _validate(capsys, toy_config, "train.steps=10", "rewards.0.weight=2")
    assert rc == 0, err
    assert "OK" in out and "toy" in out and "K=2" in out and "N=8" in out


def test_validate_with_component_options(capsys, toy_config):
    rc, out, err = _validate(capsys, toy_config, "gate={name: hard, margin: 0.1}",
                             "horizons={name: explicit, steps: [0, -1], weights: [1, 2]}",
                             "rewards.0.target=0.3")
    assert rc == 0, err


@pytest.mark.parametrize(
    "overrides, needles",
    [
        # unknown keys
        (["bogus.key=1"], ["bogus: unknown option"]),
        (["student.foo=1"], ["student.foo: unknown option"]),
        # wrong types / ranges
        (["train.steps=abc"], ["train.steps", "valid integer", "'abc'"]),
        (["train.lr=-1"], ["train.lr", "greater than 0"]),
        (["teacher.kind=average"], ["teacher.kind"]),
        (["backbone.resolution=-1"], ["backbone.resolution"]),
        # unknown components, with a suggestion
        (["gate.name=sigmod"], ["gate.name: unknown gate 'sigmod'", "Did you mean 'sigmoid'"]),
        (["rewards.0.name=toy-brightnes"], ["rewards.0.name: unknown reward", "'toy-brightness'"]),
        (["horizons.name=nope"], ["horizons.name: unknown horizon schedule 'nope'"]),
        (["backbone.name=tyo"], ["backbone.name: unknown backbone 'tyo'", "'toy'"]),
        # component options, checked against the factory's signature
        (["gate.tau=0"], ["gate.tau", "greater than 0"]),
        (["gate.tau=-1"], ["gate.tau", "greater than 0"]),
        (["gate.tau=abc"], ["gate.tau", "valid number"]),
        (["gate.foo=1"], ["gate.foo: unknown option"]),
        (["gate.name=hard", "gate.tau=1"], ["gate.tau: unknown option", "Options of gate 'hard': margin"]),
        (["horizons.name=explicit"], ["horizons.steps: required option is missing"]),
        (["rewards.0.target=2"], ["rewards.0.target", "less than or equal to 1"]),
        (["backbone.interpolation=vp"], ["backbone.interpolation"]),
        # bad override syntax
        (["train.steps"], ["override 'train.steps'", "expected key=value"]),
        (["rewards.3.weight=2"], ["rewards.3", "indexes a list of 1 entries"]),
        (["train.steps=[1"], ["override 'train.steps=[1'", "cannot parse"]),
        # cross-field rules
        (["student.steps=8"], ["student.steps (K=8) must be smaller than teacher.steps (N=8)"]),
        (["student.steps=9"], ["student.steps (K=9)"]),
        (["student.grad_steps=3"], ["student.grad_steps (3) cannot exceed student.steps (2)"]),
        (["rewards=[]"], ["rewards: at least one reward is required"]),
        (["rewards.0.weight=0"], ["rewards: all reward weights are 0"]),
        (["rewards.0.std=0"], ["rewards.0.std"]),
        (["deepspeed.zero_optimization.stage=5"], ["deepspeed.zero_optimization.stage"]),
    ],
)
def test_validate_errors_name_the_key(capsys, toy_config, overrides, needles):
    rc, out, err = _validate(capsys, toy_config, *overrides)
    assert rc == 2, out
    assert err.startswith("error: ")
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert "Traceback" not in err
    assert "Value error" not in err


@pytest.mark.parametrize(
    "text, needles",
    [
        ("seed: 0\nbackbone:\n  name: [toy\nrewards: []\n", ["bad.yaml:", "YAML syntax error"]),
        ("backbone: {name: toy}\nrewards:\n  - name: toy-brightness\n   weight: 1\n", ["bad.yaml:4:", "YAML syntax error"]),
        ("", ["bad.yaml: the file is empty"]),
        ("# only a comment\n", ["bad.yaml: the file is empty"]),
        ("- a\n- b\n", ["expected a mapping", "list"]),
        ("rewards: [{name: toy-brightness}]\n", ["backbone: required option is missing"]),
        ("backbone: {name: toy}\n", ["rewards: required option is missing"]),
        ("backbone: {weights: x}\nrewards: [{name: toy-brightness}]\n", ["backbone.name"]),
    ],
)
def test_validate_file_errors(capsys, tmp_path, text, needles):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    rc, out, err = _validate(capsys, path)
    assert rc == 2
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert "Traceback" not in err


def test_yaml_error_reports_the_line(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 0\nbackbone: {name: toy}\ntrain:\n  steps: [1, 2\nrewards: []\n")
    rc, _, err = _validate(capsys, path)
    assert rc == 2 and f"{path}:5:" in err  # the parser notices at line 5


def test_validate_directory_and_missing_file(capsys, tmp_path):
    rc, _, err = _validate(capsys, tmp_path)
    assert rc == 2 and "is a directory" in err and "Traceback" not in err
    rc, _, err = _validate(capsys, tmp_path / "nope.yaml")
    assert rc == 2 and "no such file" in err


def test_validate_non_utf8_file(capsys, tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("seed: 0 # caf\xe9\n".encode("latin-1"))
    rc, _, err = _validate(capsys, path)
    assert rc == 2 and "not a UTF-8 text file" in err


def _experiment_configs():
    return sorted((REPO / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", _experiment_configs(), ids=lambda p: p.name)
def test_every_experiment_config_validates(capsys, path):
    rc, out, err = _validate(capsys, path, "--no-weights")  # the weights are not here (tests/test_weights.py)
    assert rc == 0, err


def _config_keys(model, prefix=""):
    """Every documented key of the config schema, dotted (``student.lora.rank``)."""
    import typing

    from pydantic import BaseModel

    keys = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        keys.append(key)
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        for c in candidates:
            inner = typing.get_args(c)[0] if typing.get_origin(c) is list and typing.get_args(c) else c
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                keys += _config_keys(inner, f"{key}.")
    return keys


def test_docs_config_md_documents_every_key():
    text = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    missing = []
    for key in _config_keys(RatsConfig):
        parts = key.split(".")
        if any(f"`{'.'.join(parts[i:])}`" in text for i in range(len(parts))):
            continue
        missing.append(key)
    assert not missing, f"docs/config.md does not mention {missing}"
    for section in [k for k in RatsConfig.model_fields if k not in ("seed", "output_dir")]:
        assert f"`{section}`" in text, section
