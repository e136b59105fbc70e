"""What a new user meets first: switching components from the command line, typos in keys and options,
and seeing a component's options (`rats plugins NAME`, `rats plugins --json`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import Field
from typing import Annotated

from rats_core.cli import main
from rats_core.config import drop_foreign_options, load_config
from rats_core.errors import ConfigError
from rats_core.registry.catalogue import format_validation_error, param_docs, suggest

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "experiments" / "digits.yaml"


def _cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ----------------------------------------------------------------------------- item 2: switching a component


def test_switching_the_gate_drops_the_old_gates_options_with_one_note(capsys):
    rc, out, err = _cli(capsys, "validate", DIGITS, "train.steps=50", "gate.name=hard", "seed=1")
    assert rc == 0, err
    assert "OK" in out and "gate hard" in out
    notes = [line for line in err.splitlines() if line.strip()]
    assert notes == ["note: gate.name=hard: dropped gate.tau from the file (hard takes: margin)"]


def test_options_given_with_the_switch_are_kept():
    cfg = load_config(DIGITS, ["gate.name=hard", "gate.margin=0.1"])
    assert cfg.gate.options == {"margin": 0.1}
    # an option the new component does not take, given explicitly, is still an error
    from rats_core.config import check_components

    cfg = load_config(DIGITS, ["gate.name=hard", "gate.tau=0.2"])
    with pytest.raises(ConfigError, match=r"gate\.tau: unknown option.*Options of gate 'hard': margin"):
        check_components(cfg)


def test_options_the_new_component_takes_are_kept(write_config):
    path = write_config("""
        backbone: {name: toy, resolution: 8}
        rewards: [{name: toy-brightness, target: 0.3, weight: 2}]
        gate: {name: constant, c: 0.5}
    """)
    # toy-smoothness takes no `target`; rats' own keys (weight) stay
    cfg = load_config(path, ["rewards.0.name=toy-smoothness"])
    assert cfg.rewards[0].options == {} and cfg.rewards[0].weight == 2
    # the same name again: nothing to drop
    cfg = load_config(path, ["rewards.0.name=toy-brightness"])
    assert cfg.rewards[0].options == {"target": 0.3}


def test_whole_section_overrides_and_unknown_names_are_left_alone():
    data = {"gate": {"name": "sigmoid", "tau": 0.5}, "backbone": {"name": "toy"}, "rewards": []}
    # replaced as a whole: the user wrote every key in it
    assert drop_foreign_options({"gate": {"name": "hard", "tau": 0.5}}, ["gate={name: hard, tau: 0.5}"]) == []
    # an unknown name: check_components reports it (with suggestions); nothing is dropped
    data["gate"]["name"] = "hrad"
    assert drop_foreign_options(data, ["gate.name=hrad"]) == [] and data["gate"] == {"name": "hrad", "tau": 0.5}


def test_a_file_that_names_a_component_with_foreign_options_is_still_an_error(write_config, capsys):
    path = write_config("""
        backbone: {name: toy, resolution: 8}
        rewards: [{name: toy-brightness}]
        gate: {name: hard, tau: 0.5}
    """)
    rc, out, err = _cli(capsys, "validate", path)
    assert rc == 2 and "gate.tau: unknown option" in err


# ----------------------------------------------------------------------------- item 4: typos in keys and options


@pytest.mark.parametrize(
    "override, needles",
    [
        ("train.step=10", ["train.step: unknown option", "Did you mean 'steps'?", "Valid keys: steps, batch_size"]),
        ("trian.steps=10", ["trian: unknown option", "Did you mean 'train'?", "Valid keys: seed, output_dir"]),
        ("student.step=3", ["student.step: unknown option", "Did you mean 'steps'", "grad_steps"]),
        ("eval.evry=5", ["eval.evry: unknown option", "Did you mean 'every'?"]),
        ("gate.taw=0.3", ["gate.taw: unknown option", "Did you mean 'tau'?", "Options of gate 'sigmoid': tau"]),
        ("gate.widht=0.3", ["gate.widht: unknown option", "Options of gate 'sigmoid': tau"]),
        ("rewards.1.wieght=2", ["rewards.1.wieght: unknown option", "Did you mean 'weight'?",
                                "section's own keys: name, weight, normalize, mean, std"]),
        ("rewards.0.scroe=prob", ["rewards.0.scroe: unknown option", "Did you mean 'score'?",
                                  "Options of reward 'digit-confidence': path, score"]),
        ("rewards.1.scal=2", ["rewards.1.scal: unknown option", "Options of reward 'digit-sharpness'"]),
        ("horizons.weigthing=late", ["Did you mean 'weighting'?", "Options of horizon schedule 'all'"]),
    ],
)
def test_mistyped_keys_get_a_suggestion_and_the_valid_keys(capsys, override, needles):
    rc, out, err = _cli(capsys, "validate", DIGITS, override)
    assert rc == 2
    for needle in needles:
        assert needle in err, (needle, err)
    assert "Traceback" not in err


def test_suggest_matches_prefixes_and_close_spellings():
    assert suggest("step", ["steps", "lr"]) == " Did you mean 'steps'?"
    assert suggest("widht", ["width", "height"]) == " Did you mean 'width'?"
    assert suggest("zzz", ["steps", "lr"]) == ""


def test_format_validation_error_without_a_model_is_unchanged():
    import pydantic

    class M(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        a: int = 1

    with pytest.raises(pydantic.ValidationError) as exc:
        M.model_validate({"b": 1})
    assert format_validation_error(exc.value, prefix="x") == "x.b: unknown option"
    assert format_validation_error(exc.value, model=M) == "b: unknown option. Valid keys: a."


# ----------------------------------------------------------------------------- item 3: a component's options


def test_plugins_name_prints_each_option_with_type_default_and_constraint(capsys):
    rc, out, err = _cli(capsys, "plugins", "sigmoid")
    assert rc == 0, err
    assert "gate 'sigmoid' (plugin rats_plugins.gates)" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("tau"))
    assert row.split()[:4] == ["tau", "float", "1.0", ">"] and "> 0" in row
    header = next(line for line in out.splitlines() if "OPTION" in line)
    assert header.split() == ["OPTION", "TYPE", "DEFAULT", "CONSTRAINT", "DESCRIPTION"]


def test_plugins_name_for_a_reward_lists_rats_own_keys_and_literals(capsys):
    rc, out, err = _cli(capsys, "plugins", "rewards/digit-confidence")
    assert rc == 0, err
    assert "one of 'log_prob', 'prob'" in out
    assert "Also in each rewards entry" in out and "weight" in out


def test_plugins_name_json_and_required_options(capsys):
    rc, out, err = _cli(capsys, "plugins", "explicit", "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert data["kind"] == "horizons" and data["section"] == "horizons"
    steps = next(o for o in data["options"] if o["name"] == "steps")
    assert steps["required"] is True and "default" not in steps and steps["type"] == "list[int]"
    assert data["schema"]["required"] == ["steps"]


def test_plugins_name_unknown_suggests(capsys):
    rc, out, err = _cli(capsys, "plugins", "sigmod")
    assert rc == 2 and "Did you mean 'sigmoid'?" in err


def test_plugins_json_includes_every_components_option_schema(capsys):
    rc, out, err = _cli(capsys, "plugins", "--json")
    assert rc == 0, err
    plugins = {p["name"]: p for p in json.loads(out)}
    gates = plugins["rats_plugins.gates"]
    assert set(gates["schemas"]["gates"]) == set(gates["components"]["gates"])
    tau = gates["schemas"]["gates"]["sigmoid"]["properties"]["tau"]
    assert tau["default"] == 1.0 and tau["exclusiveMinimum"] == 0 and tau["type"] == "number"
    for p in plugins.values():  # every component of every plugin has its schema
        for kind, names in p["components"].items():
            assert set(p["schemas"][kind]) == set(names)


def documented(width: Annotated[float, Field(gt=0, description="how wide")] = 1.0, depth: int = 2, mode: str = "a"):
    """A documented gate.

    Args:
        depth: how deep; a longer description
            over two lines
        mode (str): which mode
    """
    return lambda t, s: t


def test_descriptions_come_from_field_or_docstring(fresh_plugins, capsys):
    from rats_core import hookimpl

    assert param_docs(documented) == {"depth": "how deep; a longer description over two lines", "mode": "which mode"}

    class Plugin:
        @hookimpl
        def register_gates(self, register):
            register("documented-gate", documented)

    fresh_plugins.register_plugin(Plugin(), name="documented")
    rc, out, err = _cli(capsys, "plugins", "documented-gate")
    assert rc == 0, err
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and line.split()}
    assert "how wide" in rows["width"] and "> 0" in rows["width"]
    assert "how deep; a longer description over two lines" in rows["depth"]
    assert "which mode" in rows["mode"]


# ----------------------------------------------------------------------------- item 6: composition


def _doc_yaml_block(heading: str) -> str:
    text = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    section = text[text.index(heading):]
    start = section.index("```yaml\n") + len("```yaml\n")
    return section[start: section.index("```", start)]


def test_base_example_of_the_docs_inherits_and_keeps_paths_pointing_at_the_base_files(tmp_path, monkeypatch):
    import shutil

    shutil.copytree(REPO / "experiments", tmp_path / "experiments")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "hard-gate.yaml").write_text(_doc_yaml_block("## Composing configs"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # paths must not depend on the working directory
    cfg = load_config(tmp_path / "mine" / "hard-gate.yaml")
    assert cfg.data.prompts == str((tmp_path / "experiments" / "prompts" / "digits_train.txt").resolve())
    assert cfg.data.eval_prompts == str((tmp_path / "experiments" / "prompts" / "digits_heldout.txt").resolve())
    assert cfg.gate.name == "hard" and cfg.gate.options == {"margin": 0.05}  # not the base's tau
    assert cfg.train.steps == 50 and cfg.train.batch_size == 8 and cfg.train.lr == 1e-4  # merged
    assert [r.name for r in cfg.rewards] == ["digit-confidence"]  # lists replaced
    assert cfg.output_dir == "runs/digits-hard" and cfg.student.steps == 2
    from rats_core.config import check_components

    check_components(cfg)  # prompt files found


def test_base_errors(write_config):
    a = write_config("base: b.yaml\nseed: 1\n", "a.yaml")
    write_config("base: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="include each other"):
        load_config(a)
    c = write_config("base: nowhere.yaml\n", "c.yaml")
    with pytest.raises(ConfigError, match=r"base: .*nowhere.yaml does not exist \(a base path is relative to the file"):
        load_config(c)
    d = write_config("base: [1]\n", "d.yaml")
    with pytest.raises(ConfigError, match="expected the path of another config file"):
        load_config(d)


def test_merge_rules():
    from rats_core.config import merge_config

    base = {"gate": {"name": "sigmoid", "tau": 0.1}, "train": {"steps": 100, "lr": 1}, "rewards": [{"name": "a"}]}
    top = {"gate": {"tau": 0.2}, "train": {"steps": 5}, "rewards": [{"name": "b"}]}
    assert merge_config(base, top) == {"gate": {"name": "sigmoid", "tau": 0.2}, "train": {"steps": 5, "lr": 1},
                                       "rewards": [{"name": "b"}]}
    assert merge_config(base, {"gate": {"name": "hard"}})["gate"] == {"name": "hard"}
