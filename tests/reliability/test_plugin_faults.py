"""A broken plugin is reported with its name: it fails to import, raises in its hook or factory,
registers a name someone else has, or its reward returns the wrong shape, NaNs, or no gradient.

Every case goes through ``rats run`` (exit 2, one ``error:`` block, no traceback); setup-time faults
leave no run folder behind, mid-run faults leave the last good checkpoint usable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

from rats_core.training import checkpoint as ckpt
from rats_core import hookimpl
from rats_core.registry import plugins as plugins_mod
from rats_reliability import assert_clean_error, cli, write_config


def reward_plugin(name: str, fn, factory_error: Exception | None = None):
    """A plugin registering one reward ``name`` whose scores are ``fn(images, prompts)``."""

    def factory():
        """A test reward."""
        if factory_error is not None:
            raise factory_error
        return fn

    class P:
        @hookimpl
        def register_rewards(self, register):
            register(name, factory)

    return P()


def _run(capsys, tmp_path, *overrides: str):
    cfg = write_config(tmp_path, output_dir=str(tmp_path / "new" / "run"))
    return cli(capsys, "run", cfg, *overrides)


def _nothing_written(tmp_path) -> bool:
    return not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- loading


@dataclass
class BrokenEntryPoint:
    """Stands in for an ``importlib.metadata.EntryPoint`` whose module fails to import."""

    name: str = "broken"
    value: str = "rats_broken_plugin"
    group: str = "rats"
    dist: Any = None

    def load(self):
        raise ImportError("No module named 'rats_broken_dependency'")


def test_plugin_that_fails_to_import(capsys, tmp_path, monkeypatch, fresh_plugins):
    real = plugins_mod._entry_points
    monkeypatch.setattr(plugins_mod, "_entry_points", lambda: [*real(), BrokenEntryPoint()])
    monkeypatch.delenv("RATS_LOAD_PLUGINS", raising=False)
    fresh_plugins.reset()
    # the other plugins still work: a config not naming it trains
    # and one naming a component it would have registered says which plugin failed to load
    rc, _, err = _run(capsys, tmp_path, "rewards=[{name: broken-reward}]")
    assert_clean_error(rc, err, "unknown reward 'broken-reward'", "Plugins that failed to load: broken")
    assert _nothing_written(tmp_path)
    rc, _, err = cli(capsys, "plugins")
    assert rc == 0 and "! plugin broken: failed to load: ImportError: No module named 'rats_broken_dependency'" in err


def test_plugin_that_raises_in_its_hook(capsys, tmp_path, fresh_plugins):
    class Raiser:
        @hookimpl
        def register_rewards(self, register):
            raise RuntimeError("cannot find my config file")

    fresh_plugins.register_plugin(Raiser(), name="raiser-plugin")
    rc, _, err = _run(capsys, tmp_path, "rewards=[{name: raiser-reward}]")
    assert_clean_error(rc, err, "unknown reward 'raiser-reward'", "Plugins that failed to load: raiser-plugin")
    assert _nothing_written(tmp_path)
    rc, _, err = cli(capsys, "plugins")
    assert "! plugin raiser-plugin: raised in register_rewards: RuntimeError: cannot find my config file" in err


def test_plugin_registering_a_duplicate_name(capsys, tmp_path, fresh_plugins):
    fresh_plugins.register_plugin(reward_plugin("toy-brightness", lambda i, p: i.mean(dim=(1, 2, 3))),
                                  name="copycat-plugin")
    rc, _, err = _run(capsys, tmp_path)
    assert_clean_error(rc, err, "reward 'toy-brightness' is registered twice", "rats_plugins.toy",
                       "copycat-plugin", "RATS_LOAD_PLUGINS")
    assert _nothing_written(tmp_path)


@pytest.mark.parametrize("error, needles", [
    (RuntimeError("CUDA out of cheese"), ["reward 'flaky-factory' (plugin factory-plugin) failed to build",
                                          "RuntimeError: CUDA out of cheese"]),
    (ValueError("threshold must be positive"), ["rewards.0: threshold must be positive"]),
])
def test_plugin_factory_that_raises(capsys, tmp_path, fresh_plugins, error, needles):
    fresh_plugins.register_plugin(reward_plugin("flaky-factory", None, factory_error=error), name="factory-plugin")
    rc, _, err = _run(capsys, tmp_path, "rewards=[{name: flaky-factory}]")
    assert_clean_error(rc, err, *needles)
    assert _nothing_written(tmp_path)


def test_misspelled_hook_is_refused_with_the_plugin_name(fresh_plugins):
    class Typo:
        @hookimpl
        def register_reward(self, register):  # singular: no such hook
            pass

    with pytest.raises(plugins_mod.PluginError, match="typo-plugin.*register_reward"):
        fresh_plugins.register_plugin(Typo(), name="typo-plugin")


# ----------------------------------------------------------------------------- what a reward returns


def _mean(images):
    return images.mean(dim=(1, 2, 3))


BAD_REWARDS = {
    # name: (scores, what the message says) — caught at setup, on one probe image, before any step
    "wrong-shape-2d": (lambda i, p: _mean(i)[:, None], "returned shape (1, 1), expected [1]"),
    "wrong-shape-scalar": (lambda i, p: _mean(i).sum(), "returned shape (), expected [1]"),
    "not-a-tensor": (lambda i, p: [0.5] * len(p), "returned list, expected a tensor"),
    "nan-scores": (lambda i, p: _mean(i) * float("nan"), "returned non-finite scores"),
    "inf-scores": (lambda i, p: _mean(i) + float("inf"), "returned non-finite scores"),
    "no-gradient": (lambda i, p: _mean(i).detach(), "is not differentiable"),
    "numpy-scores": (lambda i, p: _mean(i).detach().numpy(), "returned ndarray"),
    "raises": (lambda i, p: (_ for _ in ()).throw(KeyError("prompt")), "raised KeyError"),
}


@pytest.mark.parametrize("name", list(BAD_REWARDS))
def test_bad_reward_output_is_caught_at_setup_naming_the_plugin(capsys, tmp_path, fresh_plugins, name):
    fn, needle = BAD_REWARDS[name]
    fresh_plugins.register_plugin(reward_plugin(name, fn), name=f"{name}-plugin")
    rc, _, err = _run(capsys, tmp_path, f"rewards=[{{name: {name}}}]")
    assert_clean_error(rc, err, f"reward '{name}'", needle, f"plugin {name}-plugin")
    assert _nothing_written(tmp_path)


def test_reward_without_gradient_is_fine_when_only_logged(capsys, tmp_path, fresh_plugins):
    """Weight 0 (logged only) or β = 0 (the reward only drives the gate): no gradient needed."""
    fresh_plugins.register_plugin(reward_plugin("detached", lambda i, p: _mean(i).detach()), name="detached-plugin")
    rc, _, err = _run(capsys, tmp_path, "rewards=[{name: toy-brightness}, {name: detached, weight: 0}]",
                      "train.steps=1")
    assert rc == 0, err
    rc, _, err = _run(capsys, tmp_path, "rewards=[{name: detached}]", "loss.beta=0", "train.steps=1",
                      f"output_dir={tmp_path / 'beta0'}")
    assert rc == 0, err


@pytest.mark.parametrize("fault, needle", [
    ("shape", "returned shape (2, 1), expected [2]"),
    ("nan", "returned non-finite scores"),
])
def test_reward_going_bad_mid_run_keeps_the_last_checkpoint(capsys, tmp_path, fresh_plugins, fault, needle):
    calls = {"n": 0}

    def goes_bad(images, prompts):
        calls["n"] += 1
        s = _mean(images)
        if calls["n"] <= 8:  # 1 setup probe, then 2 calls per step (student and teacher)
            return s
        return s[:, None] if fault == "shape" else s * float("nan")

    fresh_plugins.register_plugin(reward_plugin("goes-bad", goes_bad), name="goes-bad-plugin")
    rc, _, err = _run(capsys, tmp_path, "rewards=[{name: goes-bad}]")
    assert_clean_error(rc, err, "reward 'goes-bad'", needle, "plugin goes-bad-plugin")
    run = tmp_path / "new" / "run"
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2]
    state = ckpt.load_tensor_file(ckpt.latest_checkpoint(run) / "student.safetensors")
    assert all(torch.isfinite(v).all() for v in state.values())
    # the run resumes from that checkpoint once the plugin is fixed
    fresh_plugins.reset()
    fresh_plugins.register_plugin(reward_plugin("goes-bad", lambda i, p: _mean(i)), name="goes-bad-plugin")
    rc, _, err = _run(capsys, tmp_path, "rewards=[{name: goes-bad}]")
    assert rc == 0, err
    assert "resumed from" in err and ckpt.latest_checkpoint(run).name == ckpt.step_name(8)
