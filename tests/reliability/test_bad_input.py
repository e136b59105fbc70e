"""Bad input: one clear ``error:`` message, exit status 2, no traceback, and nothing written.

Every case goes through the command line (``rats run`` / ``rats-run`` / ``rats validate``), in-process
with capsys, and a handful as real subprocesses of the installed scripts. "Nothing written" means
the configured ``output_dir`` does not exist afterwards (or, for a resumed run, holds exactly the
checkpoints it held before).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from rats_core.training import checkpoint as ckpt
from rats_reliability import (
    REPO,
    assert_clean_error,
    cli,
    cli_run,
    config_dict,
    run_proc,
    script,
    write_config,
)

# ----------------------------------------------------------------------------- the config file itself

FILE_CASES = {
    # id: (file text, what the message must say)
    "unknown-top-level-key": ("bogus: 1\n", ["bogus: unknown option"]),
    "unknown-nested-key": ({"train": {"stepz": 3}}, ["train.stepz: unknown option"]),
    "wrong-type": ({"train": {"steps": "many"}}, ["train.steps", "valid integer", "'many'"]),
    "wrong-type-section": ({"student": 4}, ["student", "valid dictionary"]),
    "missing-backbone": (("without", "backbone"), ["backbone: required option is missing"]),
    "missing-rewards": (("without", "rewards"), ["rewards: required option is missing"]),
    "unknown-gate": ({"gate": {"name": "sigmod", "tau": 0.05}}, ["gate.name: unknown gate 'sigmod'",
                                                                "Did you mean 'sigmoid'"]),
    "unknown-reward": ({"rewards": [{"name": "toy-brightnes"}]}, ["rewards.0.name: unknown reward",
                                                                  "'toy-brightness'"]),
    "unknown-backbone": ({"backbone": {"name": "tyo"}}, ["backbone.name: unknown backbone 'tyo'", "'toy'"]),
    "unknown-component-option": ({"gate": {"name": "sigmoid", "temperature": 1}}, ["gate.temperature: unknown option"]),
    "yaml-syntax": ("seed: 0\nbackbone: {name: toy}\ntrain:\n  steps: [1, 2\nrewards: []\n",
                    ["cfg.yaml:5:", "YAML syntax error"]),
    "yaml-bad-indent": ("backbone: {name: toy}\nrewards:\n  - name: toy-brightness\n   weight: 1\n",
                        ["cfg.yaml:4:", "YAML syntax error"]),
    "empty-file": ("", ["the file is empty"]),
    "only-comments": ("# nothing here\n", ["the file is empty"]),
    "top-level-list": ("- backbone\n- rewards\n", ["expected a mapping", "list"]),
    "top-level-scalar": ("42\n", ["expected a mapping", "int"]),
    "alias-cycle": ("backbone: {name: toy}\nrewards: [{name: toy-brightness}]\ndeepspeed: &d {x: *d}\n",
                    ["deepspeed.x", "refers to itself"]),
    "alias-bomb": ("backbone: {name: toy}\nrewards: [{name: toy-brightness}]\ndeepspeed:\n"
                   + "".join(f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10) if i else 'x'}]\n" for i in range(9)),
                   ["expands to more than"]),
    "nul-in-value": ({"output_dir": "run\x00x"}, ["output_dir: contains a NUL character"]),
}


def _file_text(spec, tmp_path: Path) -> str:
    if isinstance(spec, tuple):  # ("without", section): a required section left out
        data = config_dict(output_dir=str(tmp_path / "run"))
        del data[spec[1]]
        return yaml.safe_dump(data)
    if isinstance(spec, dict):
        return yaml.safe_dump(config_dict(**{"output_dir": str(tmp_path / "run"), **spec}))
    return spec


@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize("case", list(FILE_CASES))
def test_bad_config_file(capsys, tmp_path, monkeypatch, case, command):
    text, needles = FILE_CASES[case]
    monkeypatch.chdir(tmp_path)  # a relative output_dir (the defaults) would land here
    path = tmp_path / "cfg.yaml"
    path.write_text(_file_text(text, tmp_path))
    rc, out, err = cli(capsys, command, path)
    assert_clean_error(rc, err, *needles)
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_config_file_not_utf8(capsys, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(yaml.safe_dump(config_dict(output_dir=str(tmp_path / "run"))).encode() + b"# caf\xe9\n")
    rc, _, err = cli(capsys, "run", path)
    assert_clean_error(rc, err, "not a UTF-8 text file")
    assert not (tmp_path / "run").exists()


def test_config_path_is_a_directory_or_missing(capsys, tmp_path):
    rc, _, err = cli_run(capsys, tmp_path)
    assert_clean_error(rc, err, "is a directory")
    rc, _, err = cli_run(capsys, tmp_path / "nope.yaml")
    assert_clean_error(rc, err, "nope.yaml: no such file")
    rc, _, err = cli_run(capsys, tmp_path / "a_file_as_folder" / "cfg.yaml")
    assert_clean_error(rc, err, "no such file")


# ----------------------------------------------------------------------------- overrides and values

OVERRIDE_CASES = {
    "override-without-equals": (["train.steps"], ["override 'train.steps'", "expected key=value"]),
    "override-bad-key": (["train..steps=1"], ["is not a dotted key"]),
    "override-unparsable-value": (["train.steps=[1"], ["cannot parse the value"]),
    "override-list-index": (["rewards.5.weight=1"], ["'rewards.5' indexes a list of 1 entries"]),
    "override-into-scalar": (["seed.x=1"], ["'seed' is not a section"]),
    "override-unknown-key": (["train.bogus=1"], ["train.bogus: unknown option"]),
    "K-equals-N": (["student.steps=6"], ["student.steps (K=6) must be smaller than teacher.steps (N=6)"]),
    "K-greater-than-N": (["student.steps=7"], ["student.steps (K=7)"]),
    "train-steps-zero": (["train.steps=0"], ["train.steps", "greater than 0"]),
    "train-steps-negative": (["train.steps=-3"], ["train.steps", "greater than 0"]),
    "student-steps-zero": (["student.steps=0"], ["student.steps", "greater than 0"]),
    "teacher-steps-negative": (["teacher.steps=-1"], ["teacher.steps", "greater than 0"]),
    "batch-size-zero": (["train.batch_size=0"], ["train.batch_size", "greater than 0"]),
    "lr-negative": (["train.lr=-1e-4"], ["train.lr", "greater than 0"]),
    "tau-zero": (["gate.tau=0"], ["gate.tau", "greater than 0"]),
    "tau-negative": (["gate.tau=-0.5"], ["gate.tau", "greater than 0"]),
    "tau-not-a-number": (["gate.tau=warm"], ["gate.tau", "valid number"]),
    "rewards-empty": (["rewards=[]"], ["rewards: at least one reward is required"]),
    "reward-weights-all-zero": (["rewards=[{name: toy-brightness, weight: 0}, {name: toy-smoothness, weight: 0.0}]"],
                                ["all reward weights are 0"]),
    "reward-std-zero": (["rewards.0.normalize=fixed", "rewards.0.std=0"], ["rewards.0.std"]),
    "zero-stage-bad": (["deepspeed.zero_optimization.stage=4"], ["deepspeed.zero_optimization.stage"]),
    "zero-section-scalar": (["deepspeed.zero_optimization=5"], ["deepspeed.zero_optimization must be a mapping"]),
    "python-tag-in-override": (["seed=!!python/object/apply:os.getpid []"], ["cannot parse the value",
                                                                            "python/object/apply"]),
    "nul-in-override": (['output_dir="x\\0y"'], ["output_dir: contains a NUL character"]),
}


@pytest.mark.parametrize("case", list(OVERRIDE_CASES))
def test_bad_override_or_value(capsys, tmp_path, case):
    overrides, needles = OVERRIDE_CASES[case]
    cfg = write_config(tmp_path)
    rc, _, err = cli_run(capsys, cfg, *overrides)
    assert_clean_error(rc, err, *needles)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- files and folders named in the config


def _prompt_file(tmp_path: Path, kind: str) -> str:
    if kind == "missing":
        return str(tmp_path / "nope.txt")
    if kind == "directory":
        (tmp_path / "prompts_dir").mkdir()
        return str(tmp_path / "prompts_dir")
    path = tmp_path / ("p.jsonl" if kind.startswith("jsonl") else "p.txt")
    content = {
        "empty": b"",
        "only-comments": b"# no prompts\n\n   \n",
        "not-utf8": "a caf\xe9\n".encode("latin-1"),
        "binary": bytes(range(256)),
        "jsonl-bad-line": b'"a cat"\n{not json\n',
        "jsonl-no-prompt-field": b'{"caption_typo": "x"}\n',
    }[kind]
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize(
    "kind, needles",
    [
        ("missing", ["data.prompts: prompt file", "nope.txt does not exist"]),
        ("directory", ["is a directory"]),
        ("empty", ["has no prompts"]),
        ("only-comments", ["has no prompts"]),
        ("not-utf8", ["is not UTF-8 text"]),
        ("binary", ["is not UTF-8 text"]),
        ("jsonl-bad-line", ["p.jsonl:2: invalid JSON"]),
        ("jsonl-no-prompt-field", ["p.jsonl:1:", "'prompt' field"]),
    ],
)
def test_bad_prompt_file_writes_nothing(capsys, tmp_path, kind, needles):
    cfg = write_config(tmp_path, data={"prompts": _prompt_file(tmp_path, kind)},
                       output_dir=str(tmp_path / "runs" / "new"))
    rc, _, err = cli(capsys, "run", cfg)
    assert_clean_error(rc, err, *needles)
    assert not (tmp_path / "runs").exists()  # not even the parent folder the run would have created


def test_output_dir_not_writable(capsys, tmp_path):
    """Root ignores permission bits, so: a path *under a regular file* (cannot be created by anyone),
    and an output_dir that is itself a regular file."""
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    cfg = write_config(tmp_path)
    rc, _, err = cli_run(capsys, cfg, f"output_dir={blocker}/run")
    assert_clean_error(rc, err, "output_dir", "not writable", "Not a directory")
    rc, _, err = cli_run(capsys, cfg, f"output_dir={blocker}")
    assert_clean_error(rc, err, "output_dir", "not writable")
    assert blocker.read_text() == "keep me"


def test_resume_from_a_folder_that_is_not_a_checkpoint(capsys, tmp_path):
    cfg = write_config(tmp_path, output_dir=str(tmp_path / "new"))
    rc, _, err = cli_run(capsys, cfg, f"train.resume={tmp_path / 'nowhere'}")
    assert_clean_error(rc, err, "train.resume:", "not a rats checkpoint folder")
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- weights


def test_backbone_weights_folder_missing(capsys, tmp_path):
    cfg = write_config(tmp_path, backbone={"name": "digits", "path": str(tmp_path / "no_such_folder")},
                       output_dir=str(tmp_path / "new"))
    rc, _, err = cli(capsys, "run", cfg)
    assert_clean_error(rc, err, "digits backbone", "no_such_folder", "lacks", "pretrain")
    assert not (tmp_path / "new").exists()


def test_backbone_weights_folder_missing_a_component(capsys, tmp_path):
    """A local folder that has some parts but not the UNet: the message names the missing part."""
    folder = tmp_path / "digits_weights"
    (folder / "scheduler").mkdir(parents=True)
    (folder / "scheduler" / "scheduler_config.json").write_text("{}")
    (folder / "text_encoder").mkdir()
    (folder / "text_encoder" / "vocab.txt").write_text("a\n")
    (folder / "rats_digits.json").write_text("{}")
    cfg = write_config(tmp_path, backbone={"name": "digits", "path": str(folder)}, output_dir=str(tmp_path / "new"))
    rc, _, err = cli(capsys, "run", cfg)
    assert_clean_error(rc, err, "lacks unet/config.json")
    assert "scheduler_config.json" not in err.split("lacks", 1)[1].split(";")[0]
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(not (REPO / "experiments" / "pixart.yaml").is_file(), reason="no experiments/pixart.yaml")
def test_model_id_not_available_offline_subprocess(tmp_path):
    """``rats-run experiments/pixart.yaml`` with no network and an empty Hugging Face cache."""
    out = tmp_path / "run"
    res = run_proc([*script("rats-run"), "experiments/pixart.yaml", f"output_dir={out}", "train.device=cpu",
                    "backbone.device=cpu"],
                   HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"))
    assert_clean_error(res.returncode, res.stderr, "pixart", "HF_HUB_OFFLINE", "backbone.path=")
    assert not out.exists()


# ----------------------------------------------------------------------------- checkpoints given to resume


@pytest.fixture
def finished_run(tmp_path):
    """A 2-step toy run with one checkpoint (step 2)."""
    cfg = write_config(tmp_path, train={"steps": 2, "checkpoint_every": 0})
    from rats_core.cli import run_main

    assert run_main([str(cfg)]) == 0
    return cfg, tmp_path / "run", ckpt.checkpoint_dir(tmp_path / "run") / ckpt.step_name(2)


def _wide_toy_plugin():
    """A test plugin whose backbone is the toy with 32 hidden channels instead of 16: the same tensor
    names, other shapes (a checkpoint of a different architecture)."""
    from rats_core import hookimpl
    from rats_plugins.toy import ToyBackbone, ToyDenoiser

    def toy_wide(resolution: int = 8, path: str | None = None):
        b = ToyBackbone(resolution=resolution)
        b.denoiser = ToyDenoiser(hidden=32)
        return b

    class Wide:
        @hookimpl
        def register_backbones(self, register):
            register("toy-wide", toy_wide)

    return Wide()


def test_checkpoint_of_another_architecture_names_the_tensor(capsys, finished_run, fresh_plugins, tmp_path):
    cfg, _, step2 = finished_run
    fresh_plugins.register_plugin(_wide_toy_plugin(), name="wide-toy-plugin")
    rc, _, err = cli_run(capsys, cfg, "backbone.name=toy-wide", f"output_dir={tmp_path / 'wide'}",
                         f"train.resume={step2}", "train.steps=4")
    assert_clean_error(rc, err, "student.safetensors", "tensor 'inp.weight' has shape (16, 3, 3, 3)",
                       "expects (32, 3, 3, 3)", "different architecture")


def test_checkpoint_of_a_lora_run_given_to_a_full_run(capsys, tmp_path):
    lora_cfg = write_config(tmp_path, "lora.yaml", output_dir=str(tmp_path / "lora"),
                            student={"lora": {"rank": 2, "alpha": 2}}, train={"steps": 1, "checkpoint_every": 0})
    from rats_core.cli import run_main

    assert run_main([str(lora_cfg)]) == 0
    full = write_config(tmp_path, output_dir=str(tmp_path / "full"))
    step1 = ckpt.checkpoint_dir(tmp_path / "lora") / ckpt.step_name(1)
    rc, _, err = cli_run(capsys, full, f"train.resume={step1}")
    assert_clean_error(rc, err, "trained a different set of parameters")


@pytest.mark.parametrize(
    "damage, needles",
    [
        ("state-json-corrupt", ["state.json: corrupt"]),
        ("student-truncated", ["student.safetensors: not a readable safetensors file"]),
        ("student-missing", ["student.safetensors: missing from the checkpoint"]),
        ("student-is-a-pickle", ["student.safetensors: not a readable safetensors file"]),
        ("teacher-missing-tensor", ["teacher.safetensors"]),
        ("optimizer-missing", ["rank_00000.pt: missing from the checkpoint"]),
        ("optimizer-garbage", ["rank_00000.pt: refused to load"]),
        ("optimizer-not-a-dict", ["optimizer state is malformed"]),
    ],
)
def test_damaged_checkpoint_is_a_clear_error_and_changes_nothing(capsys, finished_run, damage, needles):
    cfg, run, step2 = finished_run
    if damage == "state-json-corrupt":
        (step2 / "state.json").write_text('{"step": 2,')
    elif damage == "student-truncated":
        data = (step2 / "student.safetensors").read_bytes()
        (step2 / "student.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "student-missing":
        (step2 / "student.safetensors").unlink()
    elif damage == "student-is-a-pickle":
        state = {k: v.clone() for k, v in load_file(str(step2 / "student.safetensors")).items()}  # not mmapped
        torch.save(state, step2 / "student.safetensors")
    elif damage == "teacher-missing-tensor":
        t = {k: v.clone() for k, v in load_file(str(step2 / "teacher.safetensors")).items()}
        t.pop(sorted(t)[0])
        save_file(t, str(step2 / "teacher.safetensors"))
    elif damage == "optimizer-missing":
        (step2 / "optimizer" / "rank_00000.pt").unlink()
    elif damage == "optimizer-garbage":
        (step2 / "optimizer" / "rank_00000.pt").write_bytes(b"\x80\x04garbage")
    elif damage == "optimizer-not-a-dict":
        torch.save([1, 2, 3], step2 / "optimizer" / "rank_00000.pt")
    before = sorted(p.relative_to(run) for p in run.rglob("*") if "tensorboard" not in p.parts
                    and p.name != "metrics.jsonl")
    rc, _, err = cli_run(capsys, cfg, "train.steps=4")
    assert_clean_error(rc, err, *needles)
    after = sorted(p.relative_to(run) for p in run.rglob("*") if "tensorboard" not in p.parts
                   and p.name != "metrics.jsonl")
    assert after == before
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2]


# ----------------------------------------------------------------------------- real subprocesses


def test_subprocess_rats_validate_unknown_key_and_syntax_error(tmp_path):
    cfg = write_config(tmp_path)
    res = run_proc([*script("rats"), "validate", str(cfg), "train.stepz=3"])
    assert_clean_error(res.returncode, res.stderr, "train.stepz: unknown option")
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone: {name: toy}\nrewards: [\n")
    res = run_proc([*script("rats"), "validate", str(bad)])
    assert_clean_error(res.returncode, res.stderr, "bad.yaml:3:", "YAML syntax error")
    assert res.stdout == ""


def test_subprocess_rats_run_bad_inputs_write_nothing(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cfg = write_config(tmp_path, output_dir=str(tmp_path / "out" / "run"))
    for overrides, needle in [
        ([f"data.prompts={empty}"], "has no prompts"),
        (["gate.name=sigmod"], "Did you mean 'sigmoid'"),
        (["student.steps=6"], "must be smaller than teacher.steps"),
        ([f"output_dir={blocker}/run"], "not writable"),
    ]:
        res = run_proc([*script("rats-run"), str(cfg), *overrides])
        assert_clean_error(res.returncode, res.stderr, needle)
        assert not (tmp_path / "out").exists(), overrides
