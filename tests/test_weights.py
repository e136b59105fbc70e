"""Missing weights: one Hub probe, every missing model in one message, `rats validate`'s weights lines."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rats_core import hookimpl, weights
from rats_core.cli import main, run_main
from rats_core.errors import WeightsNotFoundError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fresh_probe():
    weights.reset_probe()
    yield
    weights.reset_probe()


class MissingWeights:
    """A backbone that is there (the toy) and three rewards, two of whose weights are missing."""

    @hookimpl
    def register_rewards(self, register):
        def gone(path: str | None = None):
            """Weights nobody has."""
            raise WeightsNotFoundError(f"Gone weights not found: download gone.pt and set rewards.0.path={path or '/m'}"
                                       " (0 = the reward's index in `rewards`)")

        def also_gone():
            """Other weights nobody has."""
            raise WeightsNotFoundError("AlsoGone weights not found: `hf download x/y`, option `path`")

        register("gone-reward", gone)
        register("also-gone-reward", also_gone)


CONFIG = """\
backbone: {name: toy, resolution: 8}
student: {steps: 2}
teacher: {steps: 8}
rewards:
  - {name: toy-brightness}
  - {name: gone-reward, path: /models/gone.pt}
  - {name: also-gone-reward}
train: {steps: 2, batch_size: 2, progress: false}
eval: {at_end: false}
"""


@pytest.fixture
def missing_config(tmp_path, fresh_plugins):
    fresh_plugins.register_plugin(MissingWeights(), name="missing-weights")
    path = tmp_path / "cfg.yaml"
    path.write_text(CONFIG + f"output_dir: {tmp_path / 'run'}\n")
    return path


def test_validate_lists_present_and_missing_weights(missing_config, capsys):
    rc = main(["validate", str(missing_config)])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "  backbone (toy): present" in out
    assert "  rewards.0 (toy-brightness): present" in out
    assert "  rewards.1 (gone-reward): missing" in out and "  rewards.2 (also-gone-reward): missing" in out
    assert err.startswith("error: 2 of 4 models are missing")
    # each named with what to get and its own index
    assert "rewards.1: Gone weights not found: download gone.pt and set rewards.1.path=/models/gone.pt" in err
    assert "(0 = the reward's index" not in err and "rewards.2: AlsoGone weights not found" in err


def test_validate_no_weights_skips_the_check(missing_config, capsys):
    assert main(["validate", str(missing_config), "--no-weights"]) == 0
    assert "weights: unchecked (--no-weights)" in capsys.readouterr().out


def test_a_run_names_every_missing_model_at_once(missing_config, capsys):
    started = time.perf_counter()
    rc = run_main([str(missing_config)])
    err = capsys.readouterr().err
    assert rc == 2 and time.perf_counter() - started < 60
    assert err.startswith("error: 2 models are missing")
    assert "rewards.1: Gone weights not found" in err and "rewards.2: AlsoGone weights not found" in err
    assert not (missing_config.parent / "run").exists()  # nothing left behind


def test_an_unreachable_hub_is_probed_once_and_switches_to_offline_mode(monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    calls = []
    monkeypatch.setattr(weights, "_probe_now", lambda timeout=3.0: calls.append(1) or False)
    weights.start_hub_probe()
    assert weights.settle_hub() is False and weights.settle_hub() is False
    assert calls == [1]
    assert weights.hub_offline() and hub.HF_HUB_OFFLINE is True
    assert "did not answer" in weights.hub_status_line()


def test_a_reachable_hub_or_a_proxy_changes_nothing(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(weights, "_probe_now", lambda timeout=3.0: True)
    assert weights.settle_hub() is True and not weights.hub_offline()
    weights.reset_probe()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert weights.settle_hub() is None and not weights.hub_offline()


def test_pixart_without_weights_fails_once_in_seconds_naming_all_four_models(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    started = time.perf_counter()
    rc = main(["validate", "experiments/pixart.yaml"])
    err = capsys.readouterr().err
    assert rc == 2 and time.perf_counter() - started < 60
    assert err.startswith("error: 4 of 4 models are missing")
    for needle in ("backbone: pixart:", "PixArt-alpha/PixArt-XL-2-512x512", "rewards.0: HPSv2.1", "rewards.1: PickScore",
                   "rewards.1.path=", "rewards.2: ImageReward", "rewards.2.path="):
        assert needle in err, needle


def test_validate_first_line_says_config_ok_and_how_many_weights_are_missing(missing_config, capsys):
    assert main(["validate", str(missing_config)]) == 2
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"{missing_config}: config OK; weights: 2 of 4 missing (backbone toy")
    assert "callbacks [" in first
    assert main(["validate", str(missing_config), "--no-weights"]) == 0
    assert "config OK; weights: unchecked (--no-weights)" in capsys.readouterr().out.splitlines()[0]


def test_missing_weights_say_the_hub_did_not_answer_when_rats_went_offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE set by rats after its probe is not the user's setting: say what happened."""
    import huggingface_hub.constants as hub
    from rats_plugins.rewards import _weights as reward_weights

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(weights, "_probe_now", lambda timeout=3.0: False)
    weights.start_hub_probe()
    assert weights.settle_hub() is False
    assert weights.offline_reason() == "the Hub did not answer"
    hint = reward_weights.WeightsHint("Gone", "nobody/nothing", "gone.pt", "path", "/models/gone.pt")
    with pytest.raises(WeightsNotFoundError, match="the Hub did not answer"):
        reward_weights._hub_file("nobody/nothing", "gone.pt", hint)
    weights.reset_probe()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights.offline_reason() == "HF_HUB_OFFLINE is set"


def test_a_run_names_missing_weights_before_importing_torch(tmp_path):
    """The built-ins' light checks (a factory's ``missing_weights``) name every missing model of
    experiments/sdxl.yaml before torch, DeepSpeed or any model library is imported (issue 30), each model
    once, with everything it misses (PickScore: its weights and its processor)."""
    import json
    import os
    import subprocess
    import sys

    code = ("import sys, json; from rats_core.cli import run_main\n"
            "rc = run_main(['experiments/sdxl.yaml', 'output_dir=" + str(tmp_path / "run") + "'])\n"
            "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'deepspeed', 'open_clip') if m in sys.modules)\n"
            "print(json.dumps({'rc': rc, 'heavy': heavy}))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"rc": 2, "heavy": []}, proc.stderr[-2000:]
    err = proc.stderr
    assert err.startswith("error: 4 models are missing (HF_HUB_OFFLINE is set")
    for where in ("backbone: sdxl: weights for 'stabilityai/stable-diffusion-xl-base-1.0'",
                  "rewards.0: HPSv2.1 weights not found", "rewards.1: PickScore weights not found",
                  "rewards.2: ImageReward weights not found"):
        assert where in err
    assert "Also: PickScore's processor" in err and "rewards.1.processor=" in err
    assert "Also: ImageReward's BERT tokenizer" in err and "rewards.2.tokenizer=" in err
    assert not (tmp_path / "run").exists()


def test_preflight_builds_only_components_without_a_light_check(missing_config, monkeypatch):
    """A plugin without ``missing_weights`` is built to find out, but only when another component is plainly
    missing; when the light checks find nothing, nothing is built here (the run builds everything once)."""
    from rats_core.config import load_config
    from rats_core.registry.plugins import get_registry

    built = []
    real = weights._build
    monkeypatch.setattr(weights, "_build", lambda cfg, where, kind, section: built.append(where) or real(cfg, where, kind, section))
    cfg = load_config(missing_config)
    weights.preflight(cfg)  # no light check says missing: nothing built, nothing raised
    assert built == []
    factory = get_registry().get("rewards", "gone-reward").factory
    monkeypatch.setattr(factory, "missing_weights", lambda path=None, **_: [f"Gone weights not found: no file {path}"],
                        raising=False)
    with pytest.raises(WeightsNotFoundError) as info:
        weights.preflight(cfg)
    text = str(info.value)
    assert text.startswith("2 models are missing") and "rewards.1: Gone weights not found: no file /models/gone.pt" in text
    assert "rewards.2: AlsoGone weights not found" in text  # built, having no light check
    assert built == ["backbone", "rewards.0", "rewards.2"]  # the toy backbone and reward, also-gone; never gone-reward
