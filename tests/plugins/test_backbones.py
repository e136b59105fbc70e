"""The diffusers backbones (sd15, sdxl, pixart, flux, sd35) on tiny random pipelines of the real classes.

Every x0-prediction is checked against diffusers itself, not against a re-derivation:

* one ``scheduler.step`` of the model's own scheduler (EulerDiscrete for eps / v, FlowMatchEuler for
  flow) from the same latent equals ``ddim_step(x, predict_x0(...), σ, σ_next)``, on the schedule and at
  σ's between its grid points (the teacher is evaluated at the student's σ's);
* a whole sampling run of the real diffusers pipeline, loaded from the exported folder, equals RATS's
  own rollout from the same noise (prompt encoding, CFG, micro-conditions, packing, VAE included).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rats_core.errors import ConfigError, WeightsNotFoundError
from rats_core.registry.interfaces import Backbone
from rats_core.registry.plugins import get_registry
from rats_core.method.rollout import sample
from rats_core.method.sigmas import ddim_step

_spec = importlib.util.spec_from_file_location("tiny_pipelines", Path(__file__).with_name("tiny_pipelines.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

REPO = Path(__file__).resolve().parents[2]
BACKBONES = ("sd15", "sdxl", "pixart", "flux", "sd35")
DEFAULT_IDS = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "pixart": "PixArt-alpha/PixArt-XL-2-512x512",
    "flux": "black-forest-labs/FLUX.1-dev",
    "sd35": "stabilityai/stable-diffusion-3.5-medium",
}
_FLUX = {"dtype": "fp32", "denoiser_dtype": "fp32", "max_sequence_length": tiny.T5_MAX_LENGTH}
#: tiny pipeline → (backbone, options); one case per parameterisation and conditioning variant
CASES = {
    "sd15": ("sd15", {}),  # eps
    "sd15-v": ("sd15", {}),  # v-prediction
    "sdxl": ("sdxl", {}),  # pooled text + add_time_ids, zeroed negative
    "pixart": ("pixart", {}),  # α 512: learned σ, no micro-conditions
    "pixart-1024": ("pixart", {}),  # α 1024: resolution / aspect-ratio conditioning
    "pixart-sigma": ("pixart", {}),  # Σ: 300 T5 tokens, Σ pipeline class
    "flux": ("flux", _FLUX),  # flow, guidance embedding, dynamic shift
    "flux-schnell": ("flux", _FLUX),  # flow, static shift, true CFG
    "sd35": ("sd35", _FLUX),  # flow (MMDiT-X), three text encoders, static shift 3, true CFG
    "sd35-no-t5": ("sd35", {**_FLUX, "t5": False}),  # T5 dropped: zeros in its place, as the pipeline's
}
#: the flow-matching cases; the others are eps / v models
FLOW = ("flux", "sd35")
VE_CASES = [c for c in CASES if not c.startswith(FLOW)]
PROMPTS = ["a photo of a cat", "a red car in the tree"]


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models on a shared machine: extra intra-op threads only add contention.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """case → folder of its tiny pipeline, built once per session on first use."""
    root = tmp_path_factory.mktemp("tiny_pipelines")
    made: dict[str, Path] = {}

    def get(case: str) -> Path:
        if case not in made:
            made[case] = tiny.BUILDERS[case](root / case)
        return made[case]

    return get


@pytest.fixture(scope="session")
def load(tiny_dir):
    """case → backbone built through the plugin registry (cached unless ``fresh`` or options given)."""
    cache: dict[str, object] = {}

    def get(case: str, fresh: bool = False, **options):
        name, opts = CASES[case]
        if fresh or options or case not in cache:
            bb = get_registry().build(
                "backbones", name, {"path": str(tiny_dir(case)), "resolution": tiny.RESOLUTION, **opts, **options}
            )
            if fresh or options:
                return bb
            cache[case] = bb
        return cache[case]

    return get


def noise_for(bb, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(bb.latent_shape(batch), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- registration and options


def test_every_backbone_is_registered_with_the_options_a_gpu_user_expects():
    registry = get_registry()
    for name in BACKBONES:
        assert name in registry.names("backbones"), registry.errors
        props = registry.get("backbones", name).options_schema()["properties"]
        for option in ("path", "resolution", "device", "dtype", "denoiser_dtype", "gradient_checkpointing",
                       "vae_slicing", "vae_tiling", "variant", "revision"):
            assert option in props, f"{name} lacks option {option}"


def test_options_reach_the_models(load):
    bb = load("sd15", gradient_checkpointing=True, vae_slicing=True, vae_tiling=True, dtype="bf16",
              timestep_spacing="linspace")
    assert bb.denoiser.is_gradient_checkpointing
    assert bb.vae.use_slicing and bb.vae.use_tiling
    assert bb.text_encoder.dtype == torch.bfloat16 and bb.vae.dtype == torch.bfloat16
    assert bb.denoiser.dtype == torch.float32
    assert bb.schedule.scheduler.config.timestep_spacing == "linspace"
    assert not any(p.requires_grad for m in bb.frozen_modules() for p in m.parameters())
    with pytest.raises(ConfigError, match="backbone.prediction_type"):
        load("sd15", prediction_type="x0")


@pytest.mark.parametrize("case", ["sd15", "sdxl", "pixart", "flux", "sd35"])
def test_lora_targets_exist_in_the_architecture(case, load):
    bb = load(case)
    names = [n for n, _ in bb.denoiser.named_modules()]
    for target in bb.lora_target_modules:
        assert any(n == target or n.endswith("." + target) for n in names), f"{case}: no module matches {target}"


# ----------------------------------------------------------------------------- the protocol


@pytest.mark.parametrize("case", CASES)
def test_project_wide_backbone_contract(case, load):
    """The contract every registered backbone meets (tests/core/test_contracts.py skips these for
    want of weights; here they get their tiny ones)."""
    path = REPO / "tests" / "core" / "test_contracts.py"
    if not path.is_file():
        pytest.skip("tests/core/test_contracts.py is not in this checkout")
    spec = importlib.util.spec_from_file_location("rats_test_contracts", path)
    contracts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(contracts)
    contracts.check_backbone(load(case))


@pytest.mark.parametrize("case", CASES)
def test_protocol_shapes(case, load):
    bb = load(case)
    assert isinstance(bb, Backbone)
    assert bb.interpolation == ("flow" if case.startswith(FLOW) else "ve")
    shape = bb.latent_shape(2)
    assert shape == (2, bb.latent_channels, 8, 8)
    cond = bb.encode_prompts(PROMPTS)
    s = bb.sigmas(4)
    x = noise_for(bb) * s[1]
    with torch.no_grad():
        x0 = bb.predict_x0(bb.denoiser, x, s[1], cond)
        # a per-sample σ [B] gives the same rows as scalar calls
        per_row = bb.predict_x0(bb.denoiser, x, torch.stack([s[1], s[2]]), cond)
        row1 = bb.predict_x0(bb.denoiser, x, s[2], cond)[1]
        guided = bb.predict_x0(bb.denoiser, x, s[1], cond, guidance_scale=4.0)
    assert x0.shape == x.shape and x0.dtype == torch.float32 and torch.isfinite(x0).all()
    torch.testing.assert_close(per_row[0], x0[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(per_row[1], row1, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(guided, x0)
    images = bb.decode(x0)
    assert images.shape == (2, 3, tiny.RESOLUTION, tiny.RESOLUTION)
    assert images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize("case", CASES)
def test_sigmas_start_at_sigma_max_end_at_zero_and_nest(case, load):
    bb = load(case)
    for n in (1, 2, 4, 8, 50):
        s = bb.sigmas(n)
        assert s.shape == (n + 1,) and s.dtype == torch.float32
        assert float(s[-1]) == 0.0 and bool((s[:-1] > s[1:]).all())
        top = 1.0 if bb.interpolation == "flow" else bb.schedule.sigma_max
        assert abs(float(s[0]) - top) < 1e-4 * top
    if case.startswith("sd35"):
        return  # StableDiffusion3Pipeline's schedules do not nest; teacher.alignment: superset adds the student's σ's
    s50 = bb.sigmas(50)
    for n in (2, 5, 10, 25):  # trailing spacing: every such σ is one of the 50-step σ's
        for v in bb.sigmas(n):
            assert torch.isclose(s50, v, rtol=1e-5, atol=1e-6).any(), (n, float(v))


# ----------------------------------------------------------------------------- x0 against diffusers' schedulers


def _scheduler(case: str, folder: Path, bb):
    """The model's own scheduler as the pipeline would configure it (independent of the plugin)."""
    from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    if case.startswith(FLOW):
        return FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
    return EulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler", timestep_spacing="trailing")


def _set_steps(case: str, sch, n: int):
    import numpy as np
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    if not case.startswith("flux"):  # StableDiffusion3Pipeline too: set_timesteps(n) (a static shift here)
        sch.set_timesteps(n)
        return
    seq = (tiny.RESOLUTION // 2 // 2) ** 2  # packed tokens of 8×8 latents
    c = sch.config
    mu = calculate_shift(seq, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                         c.get("base_shift", 0.5), c.get("max_shift", 1.15))
    sch.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu)


def _raw_output(case: str, bb, sch, x: torch.Tensor, t: torch.Tensor, cond: dict, guidance: float = 1.0):
    """The network's raw output for ``scheduler.step``, computed the way the diffusers pipeline does."""
    net = bb.denoiser
    b = x.shape[0]
    if case.startswith("sd35"):  # StableDiffusion3Pipeline: latents as they are, t = σ·1000
        return net(hidden_states=x, timestep=t.expand(b), encoder_hidden_states=cond["prompt_embeds"],
                   pooled_projections=cond["pooled_prompt_embeds"]).sample
    if case.startswith("sd"):
        added = {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]} if "text_embeds" in cond else None
        return net(sch.scale_model_input(x, t), t, encoder_hidden_states=cond["encoder_hidden_states"],
                   added_cond_kwargs=added).sample
    if case.startswith("pixart"):
        added = {"resolution": None, "aspect_ratio": None}
        if net.config.sample_size == 128:  # PixArtAlphaPipeline's rule
            added = {"resolution": torch.tensor([[16.0, 16.0]]).repeat(b, 1),
                     "aspect_ratio": torch.tensor([[1.0]]).repeat(b, 1)}
        out = net(sch.scale_model_input(x, t), encoder_hidden_states=cond["encoder_hidden_states"],
                  encoder_attention_mask=cond["encoder_attention_mask"], timestep=t.expand(b),
                  added_cond_kwargs=added).sample
        return out.chunk(2, dim=1)[0]
    from diffusers import FluxPipeline

    _, c, h, w = x.shape
    guidance_t = torch.full([b], guidance) if net.config.guidance_embeds else None
    out = net(hidden_states=FluxPipeline._pack_latents(x, b, c, h, w), timestep=t.expand(b) / 1000,
              guidance=guidance_t, pooled_projections=cond["pooled_prompt_embeds"],
              encoder_hidden_states=cond["prompt_embeds"], txt_ids=cond["text_ids"],
              img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)).sample
    return FluxPipeline._unpack_latents(out, h * bb.vae_factor, w * bb.vae_factor, bb.vae_factor)


@pytest.mark.parametrize("case", CASES)
def test_x0_prediction_matches_one_scheduler_step(case, load, tiny_dir):
    bb = load(case)
    sch = _scheduler(case, tiny_dir(case), bb)
    _set_steps(case, sch, 4)
    torch.testing.assert_close(bb.sigmas(4), sch.sigmas.float(), rtol=1e-6, atol=1e-6)
    cond = bb.encode_prompts(PROMPTS)
    guidance = 3.5 if case == "flux" else 1.0
    x = noise_for(bb) * float(sch.sigmas[0])
    for i, t in enumerate(sch.timesteps):
        sigma, sigma_next = sch.sigmas[i], sch.sigmas[i + 1]
        with torch.no_grad():
            reference = sch.step(_raw_output(case, bb, sch, x, t, cond, guidance), t, x).prev_sample
            ours = ddim_step(x, bb.predict_x0(bb.denoiser, x, sigma, cond, guidance_scale=guidance), sigma,
                             sigma_next, bb.interpolation)
        scale = float(reference.abs().max())
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5 * max(scale, 1.0))
        x = reference


@pytest.mark.parametrize("case", ["sd15", "sd15-v", "sdxl", "pixart", "flux", "sd35"])
def test_x0_prediction_between_grid_sigmas_maps_timesteps_like_the_scheduler(case, load, tiny_dir):
    """The teacher is evaluated at the student's σ's: any σ in range must work as the scheduler maps it."""
    from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    bb = load(case)
    s50 = bb.sigmas(50)
    sigma, sigma_next = float((s50[10] * s50[11]).sqrt()), float((s50[30] * s50[31]).sqrt())
    if case.startswith(FLOW):  # no shift: the given σ's are used as they are, t = σ·1000
        sch = FlowMatchEulerDiscreteScheduler.from_pretrained(tiny_dir(case), subfolder="scheduler",
                                                              use_dynamic_shifting=False, shift=1.0)
        sch.set_timesteps(sigmas=[sigma, sigma_next])
    else:  # custom σ's: the scheduler maps them to timesteps by log-σ interpolation itself
        sch = EulerDiscreteScheduler.from_pretrained(tiny_dir(case), subfolder="scheduler")
        sch.set_timesteps(sigmas=[sigma, sigma_next])
    t = sch.timesteps[0]
    assert abs(float(bb.timestep(torch.tensor(sigma))) - float(t)) < 1e-3
    assert float(t) != round(float(t))  # really between two training timesteps
    cond = bb.encode_prompts(PROMPTS)
    x = noise_for(bb) * sigma if bb.interpolation == "ve" else noise_for(bb)
    guidance = 3.5 if case == "flux" else 1.0
    with torch.no_grad():
        reference = sch.step(_raw_output(case, bb, sch, x, t, cond, guidance), t, x).prev_sample
        ours = ddim_step(x, bb.predict_x0(bb.denoiser, x, torch.tensor(sigma), cond, guidance_scale=guidance),
                         sigma, sigma_next, bb.interpolation)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5 * max(float(reference.abs().max()), 1.0))


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("case", ["sd15", "sdxl", "pixart", "flux", "sd35"])
def test_decode_and_predict_are_differentiable_with_frozen_parts(case, load):
    bb = load(case)
    cond = bb.encode_prompts(PROMPTS[:1])
    s = bb.sigmas(2)
    x = (noise_for(bb, 1) * s[0]).requires_grad_(True)
    x0 = bb.predict_x0(bb.denoiser, x, s[0], cond)
    images = bb.decode(x0)
    images.mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in bb.denoiser.parameters())
    assert all(p.grad is None for m in bb.frozen_modules() for p in m.parameters())
    bb.denoiser.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------- export


def _pipeline_call(case: str, bb, pipe, call: dict, noise: torch.Tensor, output_type: str = "pt") -> torch.Tensor:
    """The exported pipeline called with the manifest's recorded arguments, from the given noise."""
    latents = noise
    if case.startswith("flux"):
        from diffusers import FluxPipeline

        b, c, h, w = noise.shape
        latents = FluxPipeline._pack_latents(noise, b, c, h, w)
    if case.startswith("pixart"):  # the call records it: no aspect-ratio binning, captions not cleaned
        assert call["use_resolution_binning"] is False and call["clean_caption"] is False
    with torch.no_grad():
        out = pipe(PROMPTS[:1], latents=latents, output_type=output_type, **call).images
    if output_type == "latent" and case.startswith("flux"):
        from diffusers import FluxPipeline

        out = FluxPipeline._unpack_latents(out, tiny.RESOLUTION, tiny.RESOLUTION, bb.vae_factor)
    return out


@pytest.mark.parametrize("case,guidance", [
    ("sd15", 1.0), ("sd15", 3.0), ("sd15-v", 1.0), ("sdxl", 1.0), ("sdxl", 3.0), ("pixart", 1.0), ("pixart", 3.0),
    ("pixart-1024", 1.0), ("pixart-sigma", 2.0), ("flux", 3.5), ("flux-schnell", 1.0), ("flux-schnell", 2.0),
    ("sd35", 1.0), ("sd35", 3.0), ("sd35-no-t5", 2.0),
])
def test_export_loads_in_plain_diffusers_and_samples_as_trained(case, guidance, load, tmp_path):
    from diffusers import DiffusionPipeline

    bb = load(case)
    steps = 2
    out = bb.export(bb.denoiser, tmp_path / "export", steps=steps, guidance_scale=guidance)
    manifest = json.loads((out / "rats_export.json").read_text())
    assert manifest["num_inference_steps"] == steps and manifest["guidance_scale"] == guidance
    assert manifest["format"] == "pipeline" and Path(manifest["source"]).name == case
    call = manifest["call"]
    assert call["num_inference_steps"] == steps and call["height"] == call["width"] == tiny.RESOLUTION
    pipe = DiffusionPipeline.from_pretrained(out, **manifest.get("from_pretrained", {}))
    assert type(pipe).__name__ == bb.pipeline_class == manifest["pipeline"]
    if case == "sd35-no-t5":  # saved without T5: the manifest says how to load it, and it samples without it
        assert manifest["from_pretrained"] == {"text_encoder_3": None, "tokenizer_3": None}
        assert "from_pretrained(DIR, text_encoder_3=None, tokenizer_3=None)" in manifest["usage"]
        assert pipe.text_encoder_3 is None and not (out / "text_encoder_3").exists()
    if bb.interpolation == "ve":
        assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
        assert pipe.scheduler.config.timestep_spacing == "trailing"
    noise = noise_for(bb, 1, seed=3)
    # the final latents (random tiny VAEs saturate some pixels, so images alone would prove less) ...
    theirs = _pipeline_call(case, bb, pipe, call, noise, output_type="latent")
    ours = sample(bb, bb.denoiser, PROMPTS[:1], steps, noise=noise, guidance_scale=guidance, decode=False)
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-4, atol=1e-5 * float(theirs.abs().max()))
    # ... and the decoded images
    theirs = _pipeline_call(case, bb, pipe, call, noise)
    ours = sample(bb, bb.denoiser, PROMPTS[:1], steps, noise=noise, guidance_scale=guidance)
    assert theirs.shape == ours.shape == (1, 3, tiny.RESOLUTION, tiny.RESOLUTION)
    torch.testing.assert_close(ours, theirs.float(), rtol=0, atol=2e-4)


@pytest.mark.parametrize("case", ["sd15", "flux"])
def test_export_dtype_casts_the_saved_files_not_the_live_modules(case, load, tmp_path):
    """``dtype=bf16``: every saved tensor and every transformers config says bfloat16, while the running
    backbone's frozen parts and network keep their dtype (the files are cast, the modules never copied)."""
    from safetensors import safe_open

    bb = load(case)
    live = {m: next(m.parameters()).dtype for m in bb.frozen_modules() + [bb.denoiser]}
    out = bb.export(bb.denoiser, tmp_path / "bf16", steps=2, dtype="bf16")
    seen = set()
    for f in out.glob("*/*.safetensors"):
        with safe_open(str(f), "pt") as h:
            seen |= {str(h.get_slice(k).get_dtype()) for k in h.keys()}
    assert seen == {"BF16"}
    for config in out.glob("text_encoder*/config.json"):
        assert json.loads(config.read_text()).get("dtype", "bfloat16") == "bfloat16", config
    assert {m: next(m.parameters()).dtype for m in live} == live
    assert json.loads((out / "rats_export.json").read_text())["dtype"] == "bfloat16"


def _with_lora(bb, wrap: str):
    from peft import LoraConfig, get_peft_model, inject_adapter_in_model

    # random A and B (not the zero-B default) so the adapter changes the output; alpha ≠ r tests scaling
    config = LoraConfig(r=4, lora_alpha=8, target_modules=bb.lora_target_modules, init_lora_weights=False)
    if wrap == "peft_model":
        return get_peft_model(bb.denoiser, config)
    return inject_adapter_in_model(config, bb.denoiser)  # what the trainer does


@pytest.mark.parametrize("case,wrap", [("sd15", "inject"), ("sdxl", "peft_model"), ("pixart", "inject"),
                                       ("flux", "inject"), ("sd35", "inject")])
def test_lora_export_merged_pipeline_and_lora_only(case, wrap, load, tiny_dir, tmp_path):
    from diffusers import DiffusionPipeline

    bb = load(case, fresh=True)
    student = _with_lora(bb, wrap)
    cond = bb.encode_prompts(PROMPTS)
    s = bb.sigmas(4)
    x = noise_for(bb) * s[1]
    guidance = 3.5 if case == "flux" else 1.0

    def x0(net):
        with torch.no_grad():
            return bb.predict_x0(net, x, s[1], cond, guidance_scale=guidance)

    expected = x0(student)
    base = DiffusionPipeline.from_pretrained(tiny_dir(case))
    base_net = base.unet if hasattr(base, "unet") else base.transformer
    assert not torch.allclose(x0(base_net), expected, atol=1e-3), "the LoRA should change the output"

    full = bb.export(student, tmp_path / "full", steps=4)
    merged = DiffusionPipeline.from_pretrained(full)
    merged_net = merged.unet if hasattr(merged, "unet") else merged.transformer
    assert not any("lora" in n for n, _ in merged_net.named_parameters())
    torch.testing.assert_close(x0(merged_net), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    torch.testing.assert_close(x0(student), expected)  # the live student was not merged in place
    assert json.loads((full / "rats_export.json").read_text())["lora_merged"] is True

    lora_dir = bb.export(student, tmp_path / "lora", steps=4, lora_only=True)
    assert (lora_dir / "adapter_model.safetensors").is_file() and (lora_dir / "adapter_config.json").is_file()
    assert (lora_dir / "scheduler" / "scheduler_config.json").is_file()
    assert not (lora_dir / "model_index.json").exists()
    manifest = json.loads((lora_dir / "rats_export.json").read_text())
    assert manifest["format"] == "lora" and manifest["num_inference_steps"] == 4
    pipe = DiffusionPipeline.from_pretrained(tiny_dir(case))
    if manifest["diffusers_lora"]:
        assert (lora_dir / "pytorch_lora_weights.safetensors").is_file()
        pipe.load_lora_weights(lora_dir)
        net = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    else:  # PixArt pipelines have no LoRA loader: the peft adapter folder
        from peft import PeftModel

        net = PeftModel.from_pretrained(pipe.transformer, lora_dir).merge_and_unload()
    torch.testing.assert_close(x0(net), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_lora_only_export_without_a_lora_is_a_clear_error(load, tmp_path):
    bb = load("sd15")
    with pytest.raises(ValueError, match="LoRA"):
        bb.export(bb.denoiser, tmp_path / "x", steps=4, lora_only=True)


# ----------------------------------------------------------------------------- missing weights


@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path):
    """Nothing cached, offline: whatever is in this machine's cache, the ids below are 'missing'."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("name", BACKBONES)
def test_missing_weights_name_the_model_and_the_override(name, empty_hub_cache):
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        get_registry().build("backbones", name, {})
    msg = str(err.value)
    assert DEFAULT_IDS[name] in msg and "backbone.path=" in msg and "\n" not in msg
    assert time.perf_counter() - start < 10


def test_hub_id_is_found_in_the_local_cache_offline(tiny_dir, empty_hub_cache):
    """A Hub id whose snapshot is in the Hugging Face cache loads with no network at all."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / "models--PixArt-alpha--PixArt-XL-2-512x512"
    shutil.copytree(tiny_dir("pixart"), repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    bb = get_registry().build("backbones", "pixart", {"resolution": tiny.RESOLUTION})
    assert bb.source.model_id == DEFAULT_IDS["pixart"] and bb.source.folder.is_relative_to(repo)
    shutil.rmtree(repo / "snapshots" / ("0" * 40) / "vae")  # a partial cache, offline: name what is missing
    with pytest.raises(WeightsNotFoundError, match=r"PixArt-alpha/PixArt-XL-2-512x512 has no 'vae/'.*backbone.path="):
        get_registry().build("backbones", "pixart", {"resolution": tiny.RESOLUTION})


def test_unreachable_hub_fails_at_once_without_waiting_for_timeouts(empty_hub_cache, monkeypatch):
    from huggingface_hub import constants

    from rats_plugins.backbones import weights

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(weights, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(WeightsNotFoundError, match="not reachable.*backbone.path=") as err:
        get_registry().build("backbones", "pixart", {"path": "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"})
    assert "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS" in str(err.value)


def test_local_folder_missing_a_component_names_it(tiny_dir, tmp_path):
    folder = tmp_path / "pixart"
    shutil.copytree(tiny_dir("pixart"), folder)
    shutil.rmtree(folder / "vae")
    with pytest.raises(WeightsNotFoundError, match=r"has no 'vae/' \(the VAE.*backbone.path="):
        get_registry().build("backbones", "pixart", {"path": str(folder)})
    shutil.copytree(tiny_dir("pixart") / "vae", folder / "vae")
    for f in (folder / "transformer").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(WeightsNotFoundError, match=r"'transformer/'.*backbone.path="):
        get_registry().build("backbones", "pixart", {"path": str(folder)})


def test_missing_folder_and_wrong_architecture_are_user_errors(tiny_dir):
    with pytest.raises(WeightsNotFoundError, match="no such folder: /nonexistent/models/sd"):
        get_registry().build("backbones", "sd15", {"path": "/nonexistent/models/sd"})
    with pytest.raises(ConfigError, match="backbone.name=sdxl"):
        get_registry().build("backbones", "sd15", {"path": str(tiny_dir("sdxl"))})


# ----------------------------------------------------------------------------- sd35's own options


def test_sd35_without_t5_needs_no_t5_folder_and_names_the_option_when_t5_is_missing(tiny_dir, tmp_path):
    folder = tmp_path / "sd35-clip-only"
    shutil.copytree(tiny_dir("sd35"), folder)
    shutil.rmtree(folder / "text_encoder_3")
    options = {"path": str(folder), "resolution": tiny.RESOLUTION, **CASES["sd35"][1]}
    bb = get_registry().build("backbones", "sd35", {**options, "t5": False})
    assert bb.text_encoder_3 is None and len(bb.frozen_modules()) == 3
    cond = bb.encode_prompts(PROMPTS)  # CLIP-L 8 + CLIP-G 16 padded to 32, then 12 zero T5 tokens
    assert cond["prompt_embeds"].shape == (2, tiny.CLIP_MAX_LENGTH + tiny.T5_MAX_LENGTH, 32)
    assert cond["prompt_embeds"][:, :, 24:].abs().sum() == 0 and cond["prompt_embeds"][:, 16:].abs().sum() == 0
    with pytest.raises(WeightsNotFoundError, match=r"no 'text_encoder_3/' \(the T5-XXL text encoder \(or set backbone.t5=false"):
        get_registry().build("backbones", "sd35", options)


def test_sd35_shift_option_dynamic_shifting_and_the_positional_table_limit(tiny_dir, tmp_path):
    """``shift`` replaces the scheduler's (and is what the export's scheduler carries); a scheduler that shifts
    by resolution gets StableDiffusion3Pipeline's ``mu`` for the trained size; sizes past the transformer's
    positional table are refused."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

    options = {"resolution": tiny.RESOLUTION, **CASES["sd35"][1]}
    shifted = get_registry().build("backbones", "sd35", {"path": str(tiny_dir("sd35")), **options, "shift": 5.0})
    reference = FlowMatchEulerDiscreteScheduler(shift=5.0)
    reference.set_timesteps(4)
    torch.testing.assert_close(shifted.sigmas(4), reference.sigmas, rtol=0, atol=0)
    assert shifted._export_scheduler().config.shift == 5.0

    folder = tmp_path / "sd35-dynamic"
    shutil.copytree(tiny_dir("sd35"), folder)
    shutil.rmtree(folder / "scheduler")
    dynamic = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                              base_image_seq_len=4, max_image_seq_len=64)
    dynamic.save_pretrained(folder / "scheduler")
    bb = get_registry().build("backbones", "sd35", {"path": str(folder), **options})
    patches = (tiny.RESOLUTION // 2 // 2) ** 2  # 8×8 latents in 2×2 patches, as the pipeline counts them
    dynamic.set_timesteps(4, mu=calculate_shift(patches, 4, 64, 0.5, 1.15))
    torch.testing.assert_close(bb.sigmas(4), dynamic.sigmas, rtol=0, atol=0)

    with pytest.raises(ConfigError, match="positional table reaches \\(32 px\\)"):
        get_registry().build("backbones", "sd35", {"path": str(tiny_dir("sd35")), **options, "resolution": 48})


# ----------------------------------------------------------------------------- experiment configs


def _run_cli(*args: str, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    code = "import sys; from rats_core.cli import main, run_main; " \
           "sys.exit(run_main(sys.argv[2:]) if sys.argv[1] == 'run' else main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("name", BACKBONES)
def test_experiment_config_validates(name):
    from rats_core.config import check_components, load_config

    path = REPO / "experiments" / f"{name}.yaml"
    cfg = load_config(path)
    check_components(cfg, source=str(path))
    assert cfg.backbone.name == name and cfg.teacher.steps == 50
    text = path.read_text()
    assert f"rats-run experiments/{name}.yaml" in text and "GB" in text.split("\n\n")[0]


def test_rats_run_without_weights_fails_at_once_naming_model_and_override(tmp_path):
    res = _run_cli("run", "experiments/pixart.yaml", f"output_dir={tmp_path / 'run'}",
                   env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr[-2000:]  # one message (naming every missing model, one per line)
    message = res.stderr[res.stderr.index("error:"):]
    assert DEFAULT_IDS["pixart"] in message and "backbone.path=" in message


# ----------------------------------------------------------------------------- end to end with the trainer


def _e2e_overrides(name: str, folder: Path, out: Path) -> list[str]:
    overrides = [
        f"backbone.path={folder}", f"backbone.resolution={tiny.RESOLUTION}", "backbone.device=cpu",
        "backbone.dtype=fp32", "backbone.denoiser_dtype=fp32",
        f"output_dir={out}", "train.steps=2", "train.batch_size=1", "train.device=cpu", "train.precision=fp32",
        "train.progress=false", "train.checkpoint_every=0", "train.lr=0.001", "student.steps=2",
        "student.grad_steps=1", "teacher.steps=4", "rewards=[{name: toy-brightness, weight: 10.0}]",
        "deepspeed={zero_optimization: {stage: 0}}", "eval.at_end=false", "eval.every=0",
        "data.prompts=[a photo of a cat, a red car]", "data.eval_prompts=null",
    ]
    if name in ("flux", "sd35"):
        overrides.append(f"backbone.max_sequence_length={tiny.T5_MAX_LENGTH}")
    return overrides


def _train(name: str, folder: Path, out: Path, *extra: str) -> None:
    from rats_core.cli import run_main

    overrides = _e2e_overrides(name, folder, out)
    keys = {e.split("=", 1)[0] for e in extra}
    overrides = [o for o in overrides if o.split("=", 1)[0] not in keys] + list(extra)
    assert run_main([str(REPO / "experiments" / f"{name}.yaml"), *overrides]) == 0


@pytest.mark.parametrize("name", BACKBONES)
def test_end_to_end_training_on_the_experiment_config(name, tiny_dir, tmp_path):
    """``rats-run experiments/<name>.yaml`` on the tiny pipeline (the config's LoRA or full fine-tune):
    finite loss, weights change, and the export loads back in plain diffusers and generates an image."""
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    folder = tiny_dir(name)
    out = tmp_path / "run"
    _train(name, folder, out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    kwargs = dict(height=tiny.RESOLUTION, width=tiny.RESOLUTION, num_inference_steps=2, output_type="pt")
    if name in ("pixart", "flux", "sd35"):
        kwargs["max_sequence_length"] = tiny.T5_MAX_LENGTH
    if name == "pixart":
        kwargs.update(use_resolution_binning=False, clean_caption=False)
    if (out / "export_lora").is_dir():  # LoRA run: non-zero trained B matrices, loadable onto the base
        export = out / "export_lora"
        lora = load_file(str(export / "adapter_model.safetensors"))
        assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in lora.items())
        pipe = DiffusionPipeline.from_pretrained(folder)
        if (export / "pytorch_lora_weights.safetensors").is_file():
            pipe.load_lora_weights(export)
        else:
            from peft import PeftModel

            pipe.transformer = PeftModel.from_pretrained(pipe.transformer, export).merge_and_unload()
    else:
        export = out / "export"
        pipe = DiffusionPipeline.from_pretrained(export)
        sub = "unet" if (export / "unet").is_dir() else "transformer"
        before = load_file(str(next((folder / sub).glob("*.safetensors"))))
        after = load_file(str(next((export / sub).glob("*.safetensors"))))
        assert any(not torch.equal(before[k], after[k]) for k in before)
    assert json.loads((export / "rats_export.json").read_text())["num_inference_steps"] == 2
    with torch.no_grad():
        image = pipe(PROMPTS[:1], **kwargs).images
    assert image.shape == (1, 3, tiny.RESOLUTION, tiny.RESOLUTION) and torch.isfinite(image).all()


def test_end_to_end_flux_in_bf16_like_the_paper(tiny_dir, tmp_path):
    """bf16 everywhere, as the paper trains FLUX (frozen parts, LoRA base, DeepSpeed bf16): finite."""
    out = tmp_path / "run"
    _train("flux", tiny_dir("flux"), out, "train.precision=bf16", "backbone.dtype=bf16", "backbone.denoiser_dtype=bf16")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert (out / "export_lora" / "pytorch_lora_weights.safetensors").is_file()
