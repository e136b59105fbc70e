"""Hostile files and values: nothing a config, a checkpoint or a weights file holds gets executed.

* the source tree (rats_core/, plugins/) loads weights only with safetensors or
  ``torch.load(weights_only=True)``, reads YAML only with the safe loader, never passes
  ``trust_remote_code=True``, never starts a shell, never calls ``eval``/``exec`` (checked on the
  syntax tree, so comments and docstrings do not count, and neither does ``model.eval()``);
* a ``!!python/...`` tag in a config is refused with the file and line, and its code does not run;
* a pickle carrying code, wherever a weights file is expected, is refused without running;
* config values never reach a shell (shell metacharacters in paths and prompts stay literal).
"""

from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path

import pytest

from rats_core.training import checkpoint as ckpt
from rats_core.errors import CheckpointError
from rats_reliability import REPO, assert_clean_error, cli, cli_run, write_config

SOURCE_DIRS = [REPO / "rats_core", REPO / "plugins"]


# ----------------------------------------------------------------------------- the source tree


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


UNSAFE_CALLS = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "cPickle.loads", "dill.load", "dill.loads",
    "joblib.load", "marshal.load", "marshal.loads", "shelve.open", "yaml.unsafe_load", "yaml.full_load",
    "yaml.load_all", "os.system", "os.popen", "os.spawnl", "os.spawnlp", "os.execl", "os.execlp", "os.execv",
    "os.execvp", "subprocess.getoutput", "subprocess.getstatusoutput", "pty.spawn",
}


def unsafe_uses(source: str, filename: str = "<src>") -> list[str]:
    """Every unsafe loading, shell or dynamic-code call in ``source``, as ``file:line: what``."""
    found = []
    tree = ast.parse(source, filename=filename)
    # names imported directly: `from torch import load`, `from pickle import loads as l`
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) or isinstance(node, ast.AsyncFunctionDef):
            args = node.args.args + node.args.kwonlyargs
            defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults
            defaults += node.args.kw_defaults
            for a, d in zip(args, defaults):
                if a.arg == "trust_remote_code" and _is_true(d):
                    found.append(f"{filename}:{node.lineno}: trust_remote_code defaults to True in {node.name}()")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        name = aliases.get(name, name)
        where = f"{filename}:{node.lineno}"
        if name in ("torch.load",) and not _is_true(_kw(node, "weights_only")):
            found.append(f"{where}: torch.load without weights_only=True")
        if name in ("numpy.load", "np.load") and _is_true(_kw(node, "allow_pickle")):
            found.append(f"{where}: numpy.load(allow_pickle=True)")
        if name == "yaml.load":
            loader = _dotted(_kw(node, "Loader")) if _kw(node, "Loader") is not None else (
                _dotted(node.args[1]) if len(node.args) > 1 else "")
            if not loader.endswith(("SafeLoader", "CSafeLoader")):
                found.append(f"{where}: yaml.load without SafeLoader")
        if name in UNSAFE_CALLS:
            found.append(f"{where}: {name}")
        if name in ("eval", "exec", "builtins.eval", "builtins.exec", "__import__"):
            found.append(f"{where}: {name}()")
        if _is_true(_kw(node, "shell")):
            found.append(f"{where}: shell=True")
        if _is_true(_kw(node, "trust_remote_code")):
            found.append(f"{where}: trust_remote_code=True")
    # trust_remote_code=True smuggled in through a dict literal passed as **kwargs
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value == "trust_remote_code" and _is_true(v):
                    found.append(f"{filename}:{node.lineno}: {{'trust_remote_code': True}}")
    return found


def _sources():
    for folder in SOURCE_DIRS:
        yield from sorted(folder.rglob("*.py"))


def test_the_checker_catches_each_unsafe_pattern():
    bad = '''
import os, pickle, subprocess, torch, yaml
from torch import load as tl
torch.load("x.pt")
torch.load("x.pt", weights_only=False)
tl("x.pt")
pickle.loads(b"")
yaml.load(open("c.yaml"))
yaml.load(open("c.yaml"), Loader=yaml.Loader)
yaml.unsafe_load("")
subprocess.run("ls", shell=True)
os.system("ls")
eval("1")
exec("x = 1")
AutoModel.from_pretrained("x", trust_remote_code=True)
AutoModel.from_pretrained("x", **{"trust_remote_code": True})
def build(path, trust_remote_code=True): pass
'''
    found = unsafe_uses(bad)
    assert len(found) == 14, "\n".join(found)
    ok = '''
import torch, yaml, subprocess
torch.load("x.pt", weights_only=True, map_location="cpu")
yaml.safe_load("a: 1")
yaml.load("a: 1", Loader=yaml.SafeLoader)
subprocess.run(["ls", "-l"])
model.eval()
AutoModel.from_pretrained("x", trust_remote_code=cfg.trust_remote_code)
def build(path, trust_remote_code=False): pass
"""torch.load(x) and os.system in a docstring are fine"""
'''
    assert unsafe_uses(ok) == []


def test_source_tree_uses_only_safe_loaders_and_no_shell():
    found = []
    files = list(_sources())
    assert len(files) > 20, files  # the scan sees the real tree
    for path in files:
        found += unsafe_uses(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    assert found == [], "\n".join(found)


def test_no_trust_remote_code_anywhere_unless_a_config_sets_it():
    """No plugin passes ``trust_remote_code`` today; if one ever does, the value must come from its
    options (a name, never the literal True: the syntax-tree check above). A plain text search as
    well, so not even a string such as ``"trust_remote_code=True"`` built for an eval slips by."""
    hits = [str(p.relative_to(REPO)) for p in _sources()
            if "trust_remote_code=True" in p.read_text(encoding="utf-8").replace(" ", "")]
    assert hits == []


# ----------------------------------------------------------------------------- YAML tags


@pytest.mark.parametrize("tag", [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
    "!!python/name:os.system",
    "!!python/object:__main__.Evil {{}}",
])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_python_tags_in_a_config_are_refused_and_do_not_run(capsys, tmp_path, tag, command):
    marker = tmp_path / "pwned"
    cfg = write_config(tmp_path)
    text = cfg.read_text().replace("seed: 0", "seed: " + tag.format(marker=marker))
    assert "python/" in text
    cfg.write_text(text)
    rc, _, err = cli(capsys, command, cfg)
    assert_clean_error(rc, err, f"{cfg}:1:", "YAML syntax error", "could not determine a constructor")
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- pickles carrying code


class _Evil:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"state_dict": {"w": _Evil(marker)}}))
    return path


def test_reward_weight_loader_refuses_pickled_code(tmp_path):
    from rats_plugins.rewards._weights import load_state_dict

    marker = tmp_path / "pwned"
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_state_dict(_evil_pickle(tmp_path / "ImageReward.pt", marker))
    assert not marker.exists()


@pytest.mark.parametrize("reward", ["imagereward", "hpsv2"])
def test_reward_plugins_refuse_a_pickled_weights_file_with_code(capsys, tmp_path, reward):
    """Through ``rats run``: the reward's ``path`` option names a hostile .pt file."""
    marker = tmp_path / "pwned"
    evil = _evil_pickle(tmp_path / "weights.pt", marker)
    options = {"name": reward, "path": str(evil)}
    if reward == "imagereward":  # a tokenizer folder that is there: the weights file is what gets read
        (tmp_path / "tokenizer").mkdir()
        options["tokenizer"] = str(tmp_path / "tokenizer")
    cfg = write_config(tmp_path, rewards=[options], output_dir=str(tmp_path / "new"))
    rc, _, err = cli(capsys, "run", cfg)
    assert_clean_error(rc, err, "weights.pt", "weights_only=True")
    assert not marker.exists()
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("member", ["student.safetensors", "teacher.safetensors", "optimizer/rank_00000.pt"])
def test_checkpoint_members_with_pickled_code_are_refused(capsys, tmp_path, member):
    """Resuming from a checkpoint whose files were swapped for code-carrying pickles."""
    cfg = write_config(tmp_path, train={"steps": 2, "checkpoint_every": 0})
    rc, _, err = cli_run(capsys, cfg)
    assert rc == 0, err
    step2 = ckpt.checkpoint_dir(tmp_path / "run") / ckpt.step_name(2)
    marker = tmp_path / "pwned"
    _evil_pickle(step2 / member, marker)
    rc, _, err = cli_run(capsys, cfg, "train.steps=4")
    assert_clean_error(rc, err, member.split("/")[-1])
    assert not marker.exists()


def test_base_weights_file_with_pickled_code_is_refused(capsys, tmp_path):
    cfg = write_config(tmp_path, train={"steps": 1, "checkpoint_every": 0}, eval={"at_end": True})
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "pwned"
    _evil_pickle(out / "base.safetensors", marker)
    rc, _, err = cli_run(capsys, cfg)
    assert_clean_error(rc, err, "base.safetensors", "not a readable safetensors file")
    assert not marker.exists()


# ----------------------------------------------------------------------------- no shell


def test_config_values_never_reach_a_shell(capsys, tmp_path):
    """Shell metacharacters in the output folder and the prompts are just characters."""
    marker = tmp_path / "pwned"
    out = tmp_path / f"run; touch {marker}; $(touch {marker}) `touch {marker}`"
    prompts = [f"$(touch {marker})", f"`touch {marker}`", f"a cat; touch {marker}", f"| touch {marker}"]
    cfg = write_config(tmp_path, output_dir=str(out), data={"prompts": prompts},
                       train={"steps": 1, "checkpoint_every": 0})
    rc, _, err = cli_run(capsys, cfg)
    assert rc == 0, err
    assert not marker.exists()
    assert out.is_dir() and (out / "checkpoints").is_dir()  # the folder has exactly that name


# ----------------------------------------------------------------------------- the other commands read run folders too


def _argv(command: str, run: Path, tmp_path: Path) -> list:
    if command == "sample":
        return ["sample", run, "a cat", "-o", tmp_path / "out.png"]
    return [command, run, "-o", tmp_path / f"{command}_out"]


@pytest.mark.parametrize("command", ["eval", "sample", "export"])
def test_run_folder_commands_refuse_hostile_files(capsys, tmp_path, command):
    """``rats eval/sample/export RUN``: a run folder that is not one, a code-carrying pickle in place of
    the student weights, and a python tag in the run's config.yaml — refused, nothing run or written."""
    rc, _, err = cli(capsys, *_argv(command, tmp_path / "nowhere", tmp_path))
    assert_clean_error(rc, err, "nowhere")
    (tmp_path / "empty_dir").mkdir()
    rc, _, err = cli(capsys, *_argv(command, tmp_path / "empty_dir", tmp_path))
    assert_clean_error(rc, err, "not a rats run folder")

    cfg = write_config(tmp_path, train={"steps": 2, "checkpoint_every": 0})
    rc, _, err = cli_run(capsys, cfg)
    assert rc == 0, err
    run = tmp_path / "run"
    marker = tmp_path / "pwned"
    student = ckpt.checkpoint_dir(run) / ckpt.step_name(2) / "student.safetensors"
    good = student.read_bytes()
    _evil_pickle(student, marker)
    rc, _, err = cli(capsys, *_argv(command, run, tmp_path))
    assert_clean_error(rc, err, "student.safetensors", "not a readable safetensors file")
    student.write_bytes(good)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("\nseed: 0", f"\nseed: !!python/object/apply:os.system ['touch {marker}']"))
    rc, _, err = cli(capsys, *_argv(command, run, tmp_path))
    assert_clean_error(rc, err, "config.yaml:", "could not determine a constructor")
    assert not marker.exists()
    # no output written (`rats eval -o DIR` does create DIR itself before reading the run: left empty)
    outputs = [p for p in tmp_path.iterdir() if p.name.startswith(("out", f"{command}_out"))]
    assert not [f for p in outputs for f in ([p] if p.is_file() else p.rglob("*"))]
