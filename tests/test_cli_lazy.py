"""The command line answers without importing torch (issue 30): ``rats --help``, ``rats COMMAND --help``,
``rats plugins`` (and ``NAME``, ``--json``) and config mistakes -- in a section or in a component's options,
of the shipped configs -- run in a fresh interpreter, which then must not have torch (nor diffusers,
transformers, open_clip, scipy) in ``sys.modules``. ``import rats_core`` still guards torchvision lazily."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "diffusers", "transformers", "open_clip", "deepspeed", "scipy")

# runs the CLI's entry point in-process, then prints which heavy modules it imported
WRAPPER = """
import json, sys
from rats_core.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code
heavy = sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})
print(json.dumps({{"rc": rc, "heavy": heavy}}), file=sys.stderr)
""".format(heavy=set(HEAVY))


def run_cli(*argv: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    return json.loads(proc.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [("--help",), ("eval", "--help"), ("sample", "--help"), ("export", "--help"),
                                  ("estimate", "--help"), ("ablate", "--help"), ("validate", "--help"),
                                  ("plugins", "--help")])
def test_help_imports_no_torch(argv):
    out = run_cli(*argv)
    assert out["rc"] == 0 and out["heavy"] == []


def test_a_config_mistake_is_reported_without_torch():
    out = run_cli("validate", "experiments/digits.yaml", "train.step=5")
    assert out["rc"] == 2 and out["heavy"] == []


@pytest.mark.parametrize("argv", [("plugins",), ("plugins", "--json"), ("plugins", "sdxl"), ("plugins", "pickscore"),
                                  ("plugins", "scene-judge"), ("plugins", "digits"), ("plugins", "sigmoid")])
def test_listing_plugins_imports_no_torch(argv):
    """Loading the registry imports every built-in plugin module: each registers light factories."""
    out = run_cli(*argv)
    assert out["rc"] == 0 and out["heavy"] == []


@pytest.mark.parametrize("config, override", [
    ("experiments/sdxl.yaml", "backbone.resolutoin=512"),     # a backbone option
    ("experiments/sdxl.yaml", "rewards.0.dtyp=float32"),      # a reward option
    ("experiments/sdxl.yaml", "gate.tua=1"),                  # a gate option
    ("experiments/digits.yaml", "horizons.weighting=early"),  # a horizon option's choices
    ("experiments/scenes.yaml", "eval.metrics.0.reader=eyes"),  # a metric option's choices
])
def test_a_component_option_mistake_in_a_full_config_is_reported_without_torch(config, override):
    out = run_cli("validate", config, override, "--no-weights")
    assert out["rc"] == 2 and out["heavy"] == []


def test_a_valid_config_validates_without_torch():
    out = run_cli("validate", "experiments/digits.yaml", "--no-weights")
    assert out["rc"] == 0 and out["heavy"] == []


def test_a_gpu_config_validates_without_torch_on_a_machine_without_gpu():
    """sdxl.yaml leaves train.device unset: whether it would fit a GPU is asked only where one may be."""
    from rats_core.cli.main import _may_use_gpu
    from rats_core.config import load_config

    if _may_use_gpu(load_config(REPO / "experiments/sdxl.yaml")):
        pytest.skip("this machine has a GPU device node: the fit line is printed, which imports torch")
    out = run_cli("validate", "experiments/sdxl.yaml", "--no-weights")
    assert out["rc"] == 0 and out["heavy"] == []


def test_importing_rats_core_imports_no_torch_and_still_guards_torchvision():
    code = ("import sys, rats_core; assert 'torch' not in sys.modules; "
            "from rats_core._compat import _GuardFinder; "
            "assert any(isinstance(f, _GuardFinder) for f in sys.meta_path) or 'torchvision' in sys.modules; "
            "import importlib.util; importlib.util.find_spec('torchvision'); "
            "assert not any(isinstance(f, _GuardFinder) and 'torchvision' in f.pending for f in sys.meta_path)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
