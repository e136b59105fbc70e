"""Fixtures for the core tests: tiny models with known answers, and config files in tmp."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Sequence

import pytest
import torch
from torch import Tensor, nn

from rats_core.method.sigmas import initial_latents


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: intra-op threads only add overhead, and on a shared machine contention
    makes a 1 ms forward take 50 ms. Restored afterwards for tests elsewhere."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- a model with a closed form


class LinearDenoiser(nn.Module):
    """One positive scale ``m`` per channel; see :class:`LinearBackbone`."""

    def __init__(self, m: Sequence[float] = (0.5, 1.0, 2.0)):
        super().__init__()
        self.log_m = nn.Parameter(torch.tensor(m, dtype=torch.float64).log().reshape(-1, 1, 1))

    @property
    def m(self) -> Tensor:
        return self.log_m.exp()


class LinearBackbone:
    """A "model" whose deterministic sampler trajectory is known in closed form.

    Its x0-prediction is linear in x, built so that it is *constant along the probability-flow path*
    through the initial state, which makes the first-order DDIM step exact for any step size:

    * ``ve``:   ``x̂0 = m·x / (m + σ)``;         the path is ``x(σ) = (m + σ)·e``,
    * ``flow``: ``x̂0 = m·x / ((1 − σ)·m + σ)``; the path is ``x(σ) = ((1 − σ)·m + σ)·e``,

    with ``e`` fixed by the initial state and ``x̂0 = m·e`` everywhere on it. So a K-step and an N-step
    rollout from the same noise visit the same states at shared σ's. Every network call is recorded
    as ``(sigma, x)`` in :attr:`calls`.
    """

    lora_target_modules: list[str] = []

    def __init__(self, interpolation: str = "ve", sigma_max: float = 5.0, size: int = 4):
        self.interpolation = interpolation
        self.sigma_max = sigma_max if interpolation == "ve" else 1.0
        self.size = size
        self.denoiser = LinearDenoiser()
        self.calls: list[tuple[float, Tensor]] = []

    def encode_prompts(self, prompts):
        return None

    def sigmas(self, num_steps: int) -> Tensor:
        if self.interpolation == "flow":
            return torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
        s = torch.linspace(self.sigma_max, 0.05, num_steps, dtype=torch.float64)
        return torch.cat([s, torch.zeros(1, dtype=torch.float64)])

    def latent_shape(self, batch_size: int):
        return (batch_size, 3, self.size, self.size)

    def scale(self, denoiser: LinearDenoiser, sigma) -> Tensor:
        m, s = denoiser.m, torch.as_tensor(sigma, dtype=torch.float64)
        return m / (m + s) if self.interpolation == "ve" else m / ((1 - s) * m + s)

    def predict_x0(self, denoiser, x, sigma, cond, guidance_scale: float = 1.0):
        self.calls.append((float(sigma), x.detach().clone()))
        return self.scale(denoiser, sigma) * x

    def decode(self, x0: Tensor) -> Tensor:
        return torch.sigmoid(x0)

    # the closed form
    def _path_scale(self, sigma: float) -> Tensor:
        m = self.denoiser.m.detach()
        return m + sigma if self.interpolation == "ve" else (1 - sigma) * m + sigma

    def path_e(self, noise: Tensor, sigma0: float) -> Tensor:
        """The constant ``e`` of the path that starts from ``noise`` at ``sigma0``."""
        x_init = initial_latents(noise, torch.tensor(sigma0, dtype=noise.dtype), self.interpolation)
        return x_init / self._path_scale(sigma0)

    def path_state(self, noise: Tensor, sigma0: float, sigma: float) -> Tensor:
        return self._path_scale(sigma) * self.path_e(noise, sigma0)

    def path_x0(self, noise: Tensor, sigma0: float) -> Tensor:
        return self.denoiser.m.detach() * self.path_e(noise, sigma0)


@pytest.fixture(params=["ve", "flow"])
def linear_backbone(request) -> LinearBackbone:
    return LinearBackbone(request.param)


# ----------------------------------------------------------------------------- spying on rollouts


class SpyBackbone:
    """Wraps a backbone; numbers its network evaluations and records, per evaluation, whether the
    output is part of an autograd graph and how many times backward reached it."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.interpolation = inner.interpolation
        self.denoiser = inner.denoiser
        self.lora_target_modules = inner.lora_target_modules
        self.reset()

    def reset(self) -> None:
        self.n_calls = 0
        self.has_graph: dict[int, bool] = {}
        self.backward_hits: dict[int, int] = {}

    def __getattr__(self, name):  # sigmas, latent_shape, decode, encode_prompts, ...
        return getattr(self.inner, name)

    def predict_x0(self, denoiser, x, sigma, cond, guidance_scale: float = 1.0):
        step = self.n_calls
        self.n_calls += 1
        out = self.inner.predict_x0(denoiser, x, sigma, cond, guidance_scale=guidance_scale)
        self.has_graph[step] = out.grad_fn is not None
        if out.requires_grad:

            def hook(grad, _step=step):
                self.backward_hits[_step] = self.backward_hits.get(_step, 0) + 1

            out.register_hook(hook)
        return out

    def steps_reached_by_backward(self) -> set[int]:
        return set(self.backward_hits)

    def steps_with_graph(self) -> set[int]:
        return {k for k, v in self.has_graph.items() if v}


@pytest.fixture
def spy_backbone_cls():
    return SpyBackbone


@pytest.fixture
def linear_backbone_cls():
    return LinearBackbone


# ----------------------------------------------------------------------------- configs in tmp

TOY_CONFIG = """\
# Toy config for tests: the tiny pixel-space backbone and a brightness reward.
seed: 0
output_dir: runs/toy
backbone:
  name: toy
  resolution: 8
student:
  steps: 2
teacher:
  steps: 8
rewards:
  - name: toy-brightness
    weight: 1.0
gate:
  name: sigmoid
  tau: 0.5
horizons:
  name: all
train:
  steps: 3
  batch_size: 2
"""


@pytest.fixture
def toy_config(tmp_path) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(TOY_CONFIG)
    return path


@pytest.fixture
def write_config(tmp_path):
    def write(text: str, name: str = "cfg.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write
