"""Every command line in README.md and docs/*.md is run here, or listed in NOT_RUN with the reason.

Commands are taken from the fenced ``bash``/``sh``/``console`` blocks (a leading ``$ `` is dropped) and run
in-process (``rats`` → ``rats_core.cli.main``, ``rats-run`` → ``run_main``) in a scratch folder that holds
``experiments/`` and a tiny ``runs/digits`` training run. Training and evaluation get tiny settings appended
(2 steps, no periodic evaluation, two held-out prompts), so each command checks that the line as written
parses and runs, not how long the full run takes. A command whose config needs model weights that are not
here must fail at once with the missing-weights message.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

#: programs whose command lines are collected
PROGRAMS = ("rats", "rats-run", "python", "python3", "pip", "deepspeed", "torchrun", "hf", "pytest", "git")

#: commands not run here, by a regular expression on the command line, and why
NOT_RUN = {
    r"^(python3? -m venv|pip install|DS_BUILD_OPS=0 pip install|git clone)": "installation: CI does a fresh install",
    r"(^|\s)(python -m )?pytest( |$)": "runs the test suite itself",
    r"^(deepspeed|torchrun) ": "needs several GPUs",
    r"^hf ": "downloads from the Hugging Face Hub (no network here)",
    r"^python benchmarks/": "a benchmark (tests/test_benchmarks.py runs each at its smallest settings)",
    r"^python -c .*DiffusionPipeline": "plain diffusers in a separate venv without rats or torchvision (README: "
                                       "'Using an export without rats, on a CPU')",
}

#: configs whose weights are not shipped: the command must fail at once naming the missing models
NEEDS_WEIGHTS = re.compile(r"experiments/(sd15|sdxl|pixart|flux)\.yaml")

#: appended to every training command: a 2-step run writing only its checkpoint
TINY_TRAIN = ["train.steps=2", "train.checkpoint_every=0", "eval.every=0", "eval.at_end=false",
              "train.export=false", "train.progress=false"]
#: appended to every `rats eval`: two held-out prompts, one image each, no set-level metrics
TINY_EVAL = ["eval.images_per_prompt=1", "eval.metrics=[]", "eval.prompts=[a handwritten 7, a handwritten 3]"]


def doc_commands() -> list[tuple[str, int, str]]:
    """``(file, line, command)`` for each command line in a shell block of the README and docs."""
    found = []
    for path in DOC_FILES:
        in_block = False
        lang = ""
        pending = ""
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith("```"):
                in_block = not in_block
                lang = stripped[3:].strip() if in_block else ""
                continue
            if not in_block or lang not in ("bash", "sh", "console", "shell", ""):
                continue
            text = pending + stripped.removeprefix("$ ")
            if text.endswith("\\"):
                pending = text[:-1] + " "
                continue
            pending = ""
            words = _words(text)
            if not words:
                continue
            program = next((w for w in words if "=" not in w.split("/")[0] or w.startswith("-")), "")
            if program in PROGRAMS:
                found.append((path.relative_to(REPO).as_posix(), lineno, text))
    return found


def _words(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=True)
    except ValueError:
        return []


COMMANDS = doc_commands()


def _reason_not_run(command: str) -> str | None:
    for pattern, reason in NOT_RUN.items():
        if re.search(pattern, command):
            return reason
    return None


def test_the_docs_have_commands_and_each_is_run_or_explained():
    assert len(COMMANDS) > 20
    programs = {_words(c)[0] for _, _, c in COMMANDS}
    assert {"rats", "rats-run"} <= programs


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch folder with experiments/ and a 2-step digits run in runs/digits (what the eval, sample
    and export examples read)."""
    import torch

    from rats_core.cli import run_main

    root = tmp_path_factory.mktemp("docs")
    shutil.copytree(REPO / "experiments", root / "experiments")
    (root / "prompts").mkdir()
    (root / "prompts" / "drawbench.txt").write_text("a handwritten 1\na handwritten 2\n")
    (root / "prompts.txt").write_text("a handwritten 4\na handwritten 5\n")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    import os

    old = os.getcwd()
    os.chdir(root)
    try:
        assert run_main(["experiments/digits.yaml", *TINY_TRAIN]) == 0
    finally:
        os.chdir(old)
    yield root
    torch.set_num_threads(threads)


def _sd15_runs(root: Path) -> None:
    """runs/sd15-rats and runs/sd15-lora (what docs/eval.md's export examples read): experiments/sd15.yaml
    trained for 2 steps on a tiny random SD1.5 pipeline of the real diffusers classes."""
    import sys

    from rats_core.cli import run_main

    if (root / "runs" / "sd15-lora").is_dir():
        return
    sys.path.insert(0, str(REPO / "tests" / "plugins"))
    try:
        import tiny_pipelines as tiny
    finally:
        sys.path.pop(0)
    folder = tiny.build_sd15(root / "tiny-sd15")
    common = [f"backbone.path={folder}", f"backbone.resolution={tiny.RESOLUTION}", "backbone.device=cpu",
              "backbone.dtype=fp32", "backbone.denoiser_dtype=fp32", "train.batch_size=1", "train.device=cpu",
              "train.precision=fp32", "train.lr=0.001", "student.steps=2", "teacher.steps=4",
              "rewards=[{name: toy-brightness, weight: 10.0}]", "deepspeed={zero_optimization: {stage: 0}}",
              "data.prompts=[a photo of a cat, a red car]", "data.eval_prompts=null", *TINY_TRAIN]
    assert run_main(["experiments/sd15.yaml", *common, "output_dir=runs/sd15-rats", "student.lora=null"]) == 0
    assert run_main(["experiments/sd15.yaml", *common, "output_dir=runs/sd15-lora", "student.lora={rank: 4}"]) == 0


def _slow(command: str) -> bool:
    words = _words(command)
    return bool(words) and (words[0] == "rats-run" or (len(words) > 1 and words[1] in ("eval", "sample", "export",
                                                                                         "ablate"))) \
        and not NEEDS_WEIGHTS.search(command)


def _params():
    out = []
    for file, line, command in COMMANDS:
        marks = [pytest.mark.slow] if _slow(command) else []
        out.append(pytest.param(command, id=f"{file}:{line}", marks=marks))
    return out


@pytest.mark.parametrize("command", _params())
def test_doc_command(command, request, monkeypatch, capsys):
    reason = _reason_not_run(command)
    if reason is not None:
        pytest.skip(f"not run here: {reason}")
    from rats_core.registry import plugins
    from rats_core.cli import main, run_main

    words = _words(command)
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value prefixes
        name, _, value = words.pop(0).partition("=")
        monkeypatch.setenv(name, value)
    program, argv = words[0], words[1:]
    assert program in ("rats", "rats-run"), f"no runner for {command!r}: add it to NOT_RUN with a reason"
    workdir = request.getfixturevalue("workdir") if _slow(command) else _light_workdir(request)
    monkeypatch.chdir(workdir)
    plugins.reset()
    if "runs/sd15-" in command:
        _sd15_runs(workdir)
        plugins.reset()
    # `rats estimate` reads architectures shipped with rats, never the weights
    needs_weights = bool(NEEDS_WEIGHTS.search(command)) and argv[:1] != ["estimate"]
    index = len(list(workdir.glob("runs/doc-*")))
    if program == "rats-run" or argv[:1] == ["run"]:
        if not any(a.startswith("output_dir=") for a in argv):
            argv.append(f"output_dir=runs/doc-{index}")
        argv += TINY_TRAIN
        rc = run_main(argv) if program == "rats-run" else main(argv)
    else:
        if argv[:1] == ["eval"]:
            argv += TINY_EVAL
        if argv[:1] == ["ablate"]:  # every variant trains, then writes its report
            argv[2:2] = [*TINY_TRAIN, *TINY_EVAL, f"output_dir=runs/doc-{index}"]
        if "-o" in argv:  # a fresh output per command
            i = argv.index("-o") + 1
            argv[i] = str(Path(f"out-{index}-{len(list(workdir.glob('out-*')))}") / argv[i])
        rc = main(argv)
    plugins.reset()
    out, err = capsys.readouterr()
    if needs_weights:
        assert rc == 2, (out, err)
        assert "weights" in err and "Traceback" not in err, err
    else:
        assert rc == 0, f"{command}\n--- stdout\n{out}\n--- stderr\n{err}"


_LIGHT: dict[str, Path] = {}


def _light_workdir(request) -> Path:
    """For commands that read only configs: experiments/ without the training run."""
    if "root" not in _LIGHT:
        root = request.getfixturevalue("tmp_path_factory").mktemp("docs-light")
        shutil.copytree(REPO / "experiments", root / "experiments")
        _LIGHT["root"] = root
    return _LIGHT["root"]
