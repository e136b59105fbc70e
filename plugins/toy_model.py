"""The toy backbone's network and sampler (the ``toy`` plugin's heavy half; plugins/toy.py registers it).

Not a real image model: the "image" is the 3×S×S latent itself mapped to [0, 1].
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from rats_core.method.sigmas import x0_from_eps, x0_from_flow, ve_model_input


def _prompt_features(prompts: Sequence[str], dim: int) -> Tensor:
    """Deterministic bag-of-words features (no tokenizer, no weights)."""
    out = torch.zeros(len(prompts), dim)
    for i, p in enumerate(prompts):
        for word in p.lower().split():
            h = sum((j + 1) * ord(c) for j, c in enumerate(word))
            out[i, h % dim] += 1.0
    return out


class ToyDenoiser(nn.Module):
    """Conv net predicting eps (``ve``) or velocity (``flow``) from x, σ and a prompt vector."""

    def __init__(self, channels: int = 3, hidden: int = 16, text_dim: int = 16):
        super().__init__()
        self.text_dim = text_dim
        self.inp = nn.Conv2d(channels, hidden, 3, padding=1)
        self.cond = nn.Linear(text_dim + 1, hidden)
        self.mid = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.out = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: Tensor, sigma: Tensor, text: Tensor) -> Tensor:
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(x.shape[0], 1)
        c = self.cond(torch.cat([text.to(x.dtype), torch.log1p(s)], dim=1))[:, :, None, None]
        h = torch.nn.functional.silu(self.inp(x) + c)
        h = torch.nn.functional.silu(self.mid(h)) + h
        return self.out(h)


class ToyBackbone:
    """Pixel-space toy model; ``interpolation`` ``ve`` (eps-prediction) or ``flow`` (velocity)."""

    def __init__(self, resolution: int = 8, interpolation: str = "flow", seed: int = 0, sigma_max: float = 10.0):
        self.resolution = resolution
        self.interpolation = interpolation
        self.sigma_max = sigma_max if interpolation == "ve" else 1.0
        # `seed` fixes the weights without reseeding the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.denoiser = ToyDenoiser()
        self.lora_target_modules = ["inp", "mid", "out"]

    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        return _prompt_features(prompts, self.denoiser.text_dim)

    def sigmas(self, num_steps: int) -> Tensor:
        if self.interpolation == "flow":
            s = torch.linspace(1.0, 0.0, num_steps + 1)
        else:  # log-uniform between sigma_max and 0.02, then 0
            s = torch.exp(torch.linspace(math.log(self.sigma_max), math.log(0.02), num_steps))
            s = torch.cat([s, torch.zeros(1)])
        return s.float()

    def latent_shape(self, batch_size: int) -> tuple[int, ...]:
        return (batch_size, 3, self.resolution, self.resolution)

    def predict_x0(self, denoiser, x, sigma, cond, guidance_scale: float = 1.0):
        text = cond.to(x.device)
        if self.interpolation == "flow":
            return x0_from_flow(x, sigma, denoiser(x, sigma, text))
        return x0_from_eps(x, sigma, denoiser(ve_model_input(x, sigma), sigma, text))

    def decode(self, x0: Tensor) -> Tensor:
        return (x0.clamp(-1, 1) + 1) / 2

    def export(self, denoiser, directory, *, steps: int, lora_only: bool = False) -> Path:
        """``denoiser.safetensors`` (a plain ToyDenoiser state dict, any LoRA merged), or with
        ``lora_only`` the peft adapter tensors as ``lora.safetensors``; ``config.json`` records the
        sampler steps."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if lora_only:
            from peft import get_peft_model_state_dict

            state = get_peft_model_state_dict(denoiser)
            if not state:
                raise ValueError("lora_only export of a network without LoRA adapters")
            filename = "lora.safetensors"
        else:
            if any("lora_" in name for name, _ in denoiser.named_parameters()):
                import copy

                from rats_core.evaluation.export import merge_lora

                denoiser = merge_lora(copy.deepcopy(denoiser))  # on a copy: training may go on
            state = denoiser.state_dict()
            filename = "denoiser.safetensors"
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(directory / filename))
        (directory / "config.json").write_text(
            json.dumps({"backbone": "toy", "interpolation": self.interpolation, "resolution": self.resolution,
                        "steps": steps, "weights": filename})
        )
        return directory
