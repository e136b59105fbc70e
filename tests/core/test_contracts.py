"""One contract test, parametrised over every registered component (composer-style).

Whatever registers a gate, horizon schedule, reward, backbone or metric — a built-in or an installed
third-party plugin — is built with its default options (or the example options in ``EXAMPLE_OPTIONS``)
and checked against its protocol in rats_core/registry/interfaces.py. A new plugin is tested the moment it
registers. The built-ins are all built here, those that need weights on tiny random ones written by
tests/plugins/tiny_*.py; a third-party component that cannot be built here (it needs weights, or a
required option with no example below) is skipped with the reason.
"""

from __future__ import annotations

import inspect
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

from rats_core.errors import WeightsNotFoundError
from rats_core.registry.plugins import get_registry
from rats_core.registry.catalogue import KINDS
from rats_core.method.shaping import validate_horizons
from rats_core.method.sigmas import initial_latents


@lru_cache(maxsize=None)
def _tiny(name: str) -> Any:
    """A module of tests/plugins/ that writes tiny random models of the real classes in the official
    layouts, offline: ``tiny_rewards``, ``tiny_pipelines`` (the diffusers backbones), ``tiny_wan``."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "plugins" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


def _tiny_rewards() -> Any:
    return _tiny("tiny_rewards")


def _tiny_aesthetic(folder: Path) -> dict[str, Any]:
    pth, clip, _ = _tiny_rewards().build_aesthetic(folder)
    return {"path": str(pth), "clip": str(clip)}


def _tiny_clip(folder: Path) -> dict[str, Any]:
    return {"path": str(_tiny_rewards().build_clip(folder))}


def _tiny_hps(filename: str) -> Callable[[Path], dict[str, Any]]:
    def build(folder: Path) -> dict[str, Any]:
        path, _ = _tiny_rewards().build_hps(folder, filename=filename)
        return {"path": str(path), "architecture": _tiny_rewards().TINY_OPEN_CLIP}

    return build


def _tiny_imagereward(folder: Path) -> dict[str, Any]:
    ckpt, tokenizer, _ = _tiny_rewards().build_imagereward(folder)
    return {"path": str(ckpt), "tokenizer": str(tokenizer)}


def _tiny_pickscore(folder: Path) -> dict[str, Any]:
    model, processor = _tiny_rewards().build_pickscore(folder)
    return {"path": str(model), "processor": str(processor)}


def _second_scene_judge(folder: Path) -> dict[str, Any]:
    """scene-attributes refuses the shipped evaluation judge: a second one (random weights, the shipped
    architecture) stands in for one trained with another seed."""
    from rats_plugins.scenes.judge import JudgeNet, save_judge

    torch.manual_seed(5)
    save_judge(JudgeNet(), folder / "judge2")
    return {"path": str(folder / "judge2")}


#: the flow backbones' tiny text encoders: float32 weights, the tiny T5's sequence length
_TINY_FLOW = {"dtype": "fp32", "denoiser_dtype": "fp32", "max_sequence_length": 12}


def _tiny_backbone(name: str, **options: Any) -> Callable[[Path], dict[str, Any]]:
    def build(folder: Path) -> dict[str, Any]:
        tiny = _tiny("tiny_pipelines")
        return {"path": str(tiny.BUILDERS[name](folder)), "resolution": tiny.RESOLUTION, **options}

    return build


def _tiny_wan(folder: Path) -> dict[str, Any]:
    tiny = _tiny("tiny_wan")
    return {"path": str(tiny.build_wan(folder)), "resolution": tiny.RESOLUTION, "num_frames": tiny.NUM_FRAMES,
            "dtype": "fp32", "denoiser_dtype": "fp32", "max_sequence_length": tiny.MAX_SEQUENCE_LENGTH}


#: (kind, name) -> options to build with, for components whose factories require options or weights.
#: A callable is given an empty folder to write tiny weights into and returns the options. Every built-in
#: component has an entry or needs none: a built-in that cannot be built here fails, it is not skipped.
EXAMPLE_OPTIONS: dict[tuple[str, str], dict[str, Any] | Callable[[Path], dict[str, Any]]] = {
    ("horizons", "explicit"): {"steps": [0, -1], "weights": [0.5, 1.0]},
    ("rewards", "aesthetic"): _tiny_aesthetic,
    ("rewards", "clipscore"): _tiny_clip,
    ("metrics", "clipscore"): lambda folder: {**_tiny_clip(folder), "device": "cpu"},
    ("rewards", "hpsv2"): _tiny_hps("HPS_v2_compressed.pt"),
    ("rewards", "hpsv2.1"): _tiny_hps("HPS_v2.1_compressed.pt"),
    ("rewards", "imagereward"): _tiny_imagereward,
    ("rewards", "pickscore"): _tiny_pickscore,
    ("rewards", "scene-attributes"): _second_scene_judge,
    ("backbones", "sd15"): _tiny_backbone("sd15"),
    ("backbones", "sdxl"): _tiny_backbone("sdxl"),
    ("backbones", "pixart"): _tiny_backbone("pixart"),
    ("backbones", "flux"): _tiny_backbone("flux", **_TINY_FLOW),
    ("backbones", "sd35"): _tiny_backbone("sd35", **_TINY_FLOW),
    ("backbones", "wan"): _tiny_wan,
}

PROMPTS = ["a photo of a cat", "the digit 7"]


def prompts_for(component, n: int) -> list[str]:
    """The component's own ``example_prompts`` (domain-specific rewards such as a digit classifier
    only understand their prompts), else generic ones; ``n`` of them."""
    base = list(getattr(component, "example_prompts", None) or PROMPTS)
    return (base * n)[:n]


def _cases() -> list:
    try:
        reg = get_registry()
    except Exception as exc:  # e.g. a duplicate name: fail in a test, not at collection
        return [pytest.param("registry", "error", id=f"registry-error-{type(exc).__name__}")]
    return [pytest.param(kind, name, id=f"{kind}-{name}") for kind in KINDS for name in reg.names(kind)]


@lru_cache(maxsize=None)
def _build(kind: str, name: str, folder: Path) -> Any:
    component = get_registry().get(kind, name)
    options = EXAMPLE_OPTIONS.get((kind, name), {})
    if callable(options):
        options = options(folder / f"{kind}-{name}")
    required = [
        p.name
        for p in inspect.signature(component.factory).parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        and p.name not in options
    ]
    # A built-in is never skipped (its tests write tiny weights); a third-party plugin's may be.
    skip = pytest.fail if component.plugin.startswith("rats_plugins.") else pytest.skip
    if required:
        skip(f"{kind[:-1]} '{name}' requires options {required}; add an example to EXAMPLE_OPTIONS")
    try:
        return component.build(dict(options), f"{kind}.{name}")
    except WeightsNotFoundError as exc:
        skip(f"{kind[:-1]} '{name}' needs weights: {str(exc).splitlines()[0]}; add tiny ones to EXAMPLE_OPTIONS")


def _device_of(module: nn.Module) -> torch.device:
    p = next(iter(module.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


# ----------------------------------------------------------------------------- the contracts


def check_gate(gate) -> None:
    torch.manual_seed(0)
    for b in (1, 5):
        r_t, r_s = torch.randn(b), torch.randn(b)
        with torch.no_grad():
            g = gate(r_t, r_s)
        assert isinstance(g, torch.Tensor) and g.shape == (b,), f"gate must return [B], got {getattr(g, 'shape', g)}"
        assert torch.isfinite(g).all() and (g >= 0).all() and (g <= 1).all(), g
    equal = torch.zeros(3)
    assert torch.isfinite(gate(equal, equal)).all()


def check_horizons(schedule) -> None:
    for k in range(1, 9):
        for sigmas in (torch.linspace(1.0, 0.0, k + 1), torch.cat([torch.logspace(1, -2, k), torch.zeros(1)])):
            validate_horizons(schedule(sigmas), k, "under test")


def check_reward(reward) -> None:
    torch.manual_seed(0)
    if isinstance(reward, nn.Module):
        reward.eval().requires_grad_(False)
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    scores = reward(images, prompts_for(reward, 2))
    assert isinstance(scores, torch.Tensor) and scores.shape == (2,), getattr(scores, "shape", scores)
    assert torch.isfinite(scores).all()
    assert scores.requires_grad, "a reward must be differentiable with respect to the images"
    scores.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    if getattr(reward, "scores_video", False):  # declared native video: [B, 3, F, H, W] in, [B] out
        videos = torch.rand(2, 3, 4, 64, 64, requires_grad=True)
        scores = reward(videos, prompts_for(reward, 2))
        assert isinstance(scores, torch.Tensor) and scores.shape == (2,), getattr(scores, "shape", scores)
        scores.sum().backward()
        assert videos.grad is not None and torch.isfinite(videos.grad).all()


def check_metric(metric) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        out = metric(torch.rand(4, 3, 32, 32), prompts_for(metric, 4))
    assert isinstance(out, dict) and out, "a metric returns a non-empty dict of named floats"
    for key, value in out.items():
        assert isinstance(key, str) and isinstance(value, float) and not math.isnan(value), (key, value)
    if callable(getattr(metric, "marks", None)):  # optional per-image verdicts for the report's grid
        from rats_core.registry.interfaces import metric_marks

        marks = metric_marks([("metric", metric)], torch.rand(4, 3, 32, 32), prompts_for(metric, 4))
        assert len(marks) == 4 and all(isinstance(ok, bool) and isinstance(note, str) for ok, note in marks)
        assert all(note for ok, note in marks if not ok), "a wrong image says what was wrong"


def check_backbone(backbone) -> None:
    assert backbone.interpolation in ("ve", "flow")
    assert isinstance(backbone.denoiser, nn.Module)
    assert isinstance(backbone.lora_target_modules, list)
    assert all(isinstance(m, str) for m in backbone.lora_target_modules)
    for steps in (1, 2, 4):
        s = backbone.sigmas(steps)
        assert isinstance(s, torch.Tensor) and s.shape == (steps + 1,) and s.is_floating_point()
        assert torch.isfinite(s).all() and s[-1] == 0, s
        assert (s[1:] < s[:-1]).all(), f"sigmas({steps}) must be strictly decreasing: {s.tolist()}"
        if backbone.interpolation == "flow":
            assert s[0] <= 1
    shape = tuple(backbone.latent_shape(2))
    assert shape[0] == 2 and all(isinstance(d, int) and d > 0 for d in shape)
    assert tuple(backbone.latent_shape(1))[1:] == shape[1:]

    device = _device_of(backbone.denoiser)
    denoiser = backbone.denoiser
    with torch.no_grad():
        cond = backbone.encode_prompts(PROMPTS)
    s = backbone.sigmas(2).to(device)
    torch.manual_seed(0)
    x = initial_latents(torch.randn(shape, device=device), s[0], backbone.interpolation)
    with torch.no_grad():
        for sigma in (s[0], s[1], (s[0] + s[1]) / 2):  # the teacher evaluates off the backbone's own grid
            x0 = backbone.predict_x0(denoiser, x, sigma, cond)
            assert x0.shape == shape and torch.isfinite(x0).all()

    # the student is trained through predict_x0 and decode
    x0 = backbone.predict_x0(denoiser, x, s[1], cond)
    images = backbone.decode(x0)
    assert images.shape[:2] == (2, 3) and images.dim() in (4, 5)  # images, or video frames [B, 3, F, H, W]
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    images.float().mean().backward()
    trainable = [p for p in denoiser.parameters() if p.requires_grad]
    assert trainable and any(p.grad is not None for p in trainable), "no gradient reached the denoiser"
    denoiser.zero_grad(set_to_none=True)


def check_callback(callback) -> None:
    """An object with at least one event method, each callable, and no near-miss names (a method
    ``step_ended`` or ``on_step_end`` would never be called: say so here rather than ignore it)."""
    import difflib

    from rats_core.training.callbacks import EVENTS

    events = [e for e in EVENTS if callable(getattr(callback, e, None))]
    assert events, f"a callback implements at least one of {EVENTS}"
    for name in dir(callback):
        if name.startswith("_") or name in EVENTS or not callable(getattr(callback, name, None)):
            continue
        bare = name[3:] if name.startswith("on_") else name
        close = difflib.get_close_matches(bare, EVENTS, n=1, cutoff=0.85)
        assert not close, f"method '{name}' looks like the event '{close[0]}' but would never be called"
    assert getattr(callback, "rank_zero_only", True) in (True, False)


CHECKS = {
    "callbacks": check_callback,
    "gates": check_gate,
    "horizons": check_horizons,
    "rewards": check_reward,
    "metrics": check_metric,
    "backbones": check_backbone,
}


@pytest.mark.parametrize("kind, name", _cases())
def test_contract(kind, name, tmp_path_factory):
    if kind == "registry":
        get_registry()  # raises the loading error
    component = _build(kind, name, tmp_path_factory.getbasetemp() / "contract-examples")
    CHECKS[kind](component)


def test_every_kind_has_a_contract():
    assert set(CHECKS) == set(KINDS)
