"""The ``wan`` video backbone on a tiny random WanPipeline of the real classes, and image rewards on video.

As for the image backbones, x0-predictions are checked against diffusers itself: one step of the model's
own scheduler (the UniPC flow scheduler the Wan repositories ship, at first order: the DDIM/Euler step)
equals ``ddim_step(x, predict_x0(...))``, and a whole ``WanPipeline`` run from the exported folder equals
RATS's rollout from the same noise (UMT5 encoding, CFG, the scheduler's integer timesteps, the 3-D VAE).
"""

from __future__ import annotations

import importlib.util
import json
import textwrap
import time
from pathlib import Path

import pytest
import torch

from rats_core.errors import ConfigError, PluginError, WeightsNotFoundError
from rats_core.registry.interfaces import SCORES_VIDEO_ATTRIBUTE, Backbone
from rats_core.registry.plugins import get_registry
from rats_core.method.rewards import RewardSet, WeightedReward, frame_indices, score_frames
from rats_core.method.rollout import sample
from rats_core.method.sigmas import ddim_step

_spec = importlib.util.spec_from_file_location("tiny_wan", Path(__file__).with_name("tiny_wan.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["a photo of a cat", "a red car in the tree"]
OPTIONS = {"resolution": tiny.RESOLUTION, "num_frames": tiny.NUM_FRAMES, "dtype": "fp32", "denoiser_dtype": "fp32",
           "max_sequence_length": tiny.MAX_SEQUENCE_LENGTH}
LATENT = (16, 2, 2, 2)  # channels, latent frames (1 + 4 video frames → 2), 16 px / 8


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tiny.build_wan(tmp_path_factory.mktemp("tiny_wan") / "wan")


def build(folder: Path, **options):
    return get_registry().build("backbones", "wan", {"path": str(folder), **OPTIONS, **options})


@pytest.fixture(scope="module")
def bb(folder):
    return build(folder)


def noise_for(bb, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(bb.latent_shape(batch), generator=torch.Generator().manual_seed(seed))


def _shipped_scheduler(folder: Path, first_order: bool = True):
    """The scheduler the model folder ships (UniPC, flow σ's), at first order without its corrector:
    its step is then the deterministic DDIM step. Built from the folder, independently of the plugin."""
    from diffusers import UniPCMultistepScheduler

    extra = dict(solver_order=1, disable_corrector=list(range(1001))) if first_order else {}
    return UniPCMultistepScheduler.from_pretrained(folder, subfolder="scheduler", **extra)


# ----------------------------------------------------------------------------- registration and the protocol


def test_registered_with_the_video_options():
    props = get_registry().get("backbones", "wan").options_schema()["properties"]
    for option in ("path", "resolution", "width", "num_frames", "device", "dtype", "denoiser_dtype", "vae_dtype",
                   "gradient_checkpointing", "vae_slicing", "vae_tiling", "decode_grad_frames",
                   "flow_shift", "negative_prompt", "max_sequence_length", "variant", "revision"):
        assert option in props, option


def test_project_wide_backbone_contract(bb):
    path = REPO / "tests" / "core" / "test_contracts.py"
    spec = importlib.util.spec_from_file_location("rats_test_contracts", path)
    contracts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(contracts)
    contracts.check_backbone(bb)


def test_protocol_shapes_video_latents_and_frames(bb):
    assert isinstance(bb, Backbone) and bb.interpolation == "flow"
    assert bb.latent_shape(2) == (2, *LATENT)
    cond = bb.encode_prompts(PROMPTS)
    assert cond["prompt_embeds"].shape == (2, tiny.MAX_SEQUENCE_LENGTH, 32)
    s = bb.sigmas(4)
    x = noise_for(bb) * s[1]
    with torch.no_grad():
        x0 = bb.predict_x0(bb.denoiser, x, s[1], cond)
        per_row = bb.predict_x0(bb.denoiser, x, torch.stack([s[1], s[2]]), cond)
        row1 = bb.predict_x0(bb.denoiser, x, s[2], cond)[1]
        guided = bb.predict_x0(bb.denoiser, x, s[1], cond, guidance_scale=4.0)
    assert x0.shape == x.shape and x0.dtype == torch.float32 and torch.isfinite(x0).all()
    torch.testing.assert_close(per_row[0], x0[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(per_row[1], row1, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(guided, x0)
    frames = bb.decode(x0)
    assert frames.shape == (2, 3, tiny.NUM_FRAMES, tiny.RESOLUTION, tiny.RESOLUTION)
    assert frames.min() >= 0 and frames.max() <= 1


def test_frames_and_size_are_options(folder):
    other = build(folder, num_frames=9, resolution=32, width=48)
    assert other.latent_shape(1) == (1, 16, 3, 4, 6)
    with torch.no_grad():
        assert other.decode(torch.zeros(other.latent_shape(1))).shape == (1, 3, 9, 32, 48)
    for bad, match in (({"num_frames": 6}, "backbone: wan: num_frames must be 1 \\+ a multiple of 4"),
                       ({"resolution": 24}, "resolution must be a positive multiple of 16"),
                       ({"width": 40}, "width must be a positive multiple of 16")):
        with pytest.raises(ConfigError, match=match):
            build(folder, **bad)


# ----------------------------------------------------------------------------- σ's and x0 against diffusers


def test_sigmas_and_timesteps_are_the_shipped_schedulers(bb, folder):
    shipped = _shipped_scheduler(folder, first_order=False)  # as WanPipeline loads it: order 2, corrector on
    for n in (1, 2, 3, 4, 50):
        shipped.set_timesteps(n)
        s = bb.sigmas(n)
        torch.testing.assert_close(s, shipped.sigmas.float(), rtol=0, atol=0)
        assert torch.equal(bb.timestep(s[:-1]), shipped.timesteps.float())  # ⌊σ·1000⌋, integers
    # flow_shift 3: trailing-style few-step σ's, σ_0 at the top of the range
    assert bb.sigmas(2)[1].item() == pytest.approx(3 * 0.5005 / (1 + 2 * 0.5005), abs=1e-6)
    assert bb.sigmas(1)[0].item() == pytest.approx(1.0, abs=2e-6)
    # off the grid: the same rule
    assert bb.timestep(torch.tensor(0.61234)).item() == 612.0


def test_flow_shift_option_overrides_the_schedulers(folder):
    shifted = build(folder, flow_shift=5.0)
    assert shifted.sigmas(2)[1].item() == pytest.approx(5 * 0.5005 / (1 + 4 * 0.5005), abs=1e-6)


def test_a_flow_match_euler_scheduler_config_gives_its_shift(folder, tmp_path):
    """Community Wan folders ship FlowMatchEulerDiscreteScheduler(shift=...): the same σ rule with that shift."""
    import shutil

    from diffusers import FlowMatchEulerDiscreteScheduler

    other = tmp_path / "wan-euler"
    shutil.copytree(folder, other)
    shutil.rmtree(other / "scheduler")
    FlowMatchEulerDiscreteScheduler(shift=5.0).save_pretrained(other / "scheduler")
    index = json.loads((other / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    (other / "model_index.json").write_text(json.dumps(index))
    euler = build(other)
    assert euler.schedule.flow_shift == 5.0
    torch.testing.assert_close(euler.sigmas(3), build(folder, flow_shift=5.0).sigmas(3), rtol=0, atol=0)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_x0_prediction_matches_one_scheduler_step(bb, folder, guidance):
    """One step of the model's scheduler (order 1: DDIM) from the network output computed as WanPipeline
    computes it (two passes for CFG) equals ``ddim_step`` with ``predict_x0``, along the whole schedule."""
    sch = _shipped_scheduler(folder)
    sch.set_timesteps(4)
    cond = bb.encode_prompts(PROMPTS)
    neg = bb.encode_prompts(["", ""])["prompt_embeds"]
    x = noise_for(bb)
    for i, t in enumerate(sch.timesteps):
        sigma, sigma_next = sch.sigmas[i], sch.sigmas[i + 1]
        with torch.no_grad():
            tt = t.expand(2)
            out = bb.denoiser(hidden_states=x, timestep=tt, encoder_hidden_states=cond["prompt_embeds"],
                              return_dict=False)[0]
            if guidance > 1:
                uncond = bb.denoiser(hidden_states=x, timestep=tt, encoder_hidden_states=neg, return_dict=False)[0]
                out = uncond + guidance * (out - uncond)
            reference = sch.step(out, t, x).prev_sample
            ours = ddim_step(x, bb.predict_x0(bb.denoiser, x, sigma, cond, guidance_scale=guidance), sigma,
                             sigma_next, "flow")
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5 * max(float(reference.abs().max()), 1.0))
        x = reference


def test_x0_is_the_velocity_parameterisation(bb):
    """x0 = x − σ·v with v the transformer's output at ⌊σ·1000⌋ (off the grid too: the teacher's σ's)."""
    cond = bb.encode_prompts(PROMPTS[:1])
    x = noise_for(bb, 1)
    sigma = 0.61234
    with torch.no_grad():
        v = bb.denoiser(hidden_states=x, timestep=torch.tensor([612.0]), encoder_hidden_states=cond["prompt_embeds"],
                        return_dict=False)[0]
        x0 = bb.predict_x0(bb.denoiser, x, torch.tensor(sigma), cond)
    torch.testing.assert_close(x0, x - sigma * v, rtol=1e-5, atol=1e-6)


def test_decode_and_predict_are_differentiable_with_frozen_parts(bb):
    cond = bb.encode_prompts(PROMPTS[:1])
    s = bb.sigmas(2)
    x = (noise_for(bb, 1) * s[0]).requires_grad_(True)
    frames = bb.decode(bb.predict_x0(bb.denoiser, x, s[0], cond))
    frames[:, :, -1].mean().backward()  # the last frame alone reaches the latents and the network
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in bb.denoiser.parameters())
    assert all(p.grad is None for m in bb.frozen_modules() for p in m.parameters())
    bb.denoiser.zero_grad(set_to_none=True)


def test_decode_grad_frames_bounds_the_gradient_to_some_latent_frames_with_the_same_values(folder):
    """``decode_grad_frames=1`` on 3 latent frames: the frames are exactly the VAE's, and only the middle
    latent frame (video frames 1-4) is decoded with a gradient; the other frames carry none."""
    full = build(folder, num_frames=9)
    part = build(folder, num_frames=9, decode_grad_frames=1)
    assert part.grad_latent_frames(3) == [1] and full.grad_latent_frames(3) == [0, 1, 2]
    z = torch.randn(1, *LATENT[:1], 3, 2, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = full.vae.decode(z * torch.tensor(full.vae.config.latents_std).reshape(1, -1, 1, 1, 1)
                                    + torch.tensor(full.vae.config.latents_mean).reshape(1, -1, 1, 1, 1),
                                    return_dict=False)[0]
    reference = (reference / 2 + 0.5).clamp(0, 1)
    grads = []
    for backbone in (full, part):
        latents = z.clone().requires_grad_(True)
        frames = backbone.decode(latents)
        torch.testing.assert_close(frames, reference, rtol=1e-5, atol=1e-6)
        frames.sum().backward()
        grads.append(latents.grad.abs().sum(dim=(0, 1, 3, 4)))
    assert (grads[0] > 0).all()  # every latent frame gets a gradient from the full decode
    assert grads[1][1] > 0 and grads[1][0] == 0 and grads[1][2] == 0
    with torch.no_grad():  # without a gradient the option changes nothing
        torch.testing.assert_close(part.decode(z), reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="decode_grad_frames"):
        build(folder, decode_grad_frames=0)


def test_bf16_parts_predict_and_decode_under_the_trainers_autocast(folder):
    """bf16 everywhere, as experiments/wan.yaml trains: the rollout's autocast path gives finite x0 and frames."""
    from rats_core.method.rollout import _predict

    bb16 = build(folder, dtype="bf16", denoiser_dtype="bf16")
    assert bb16.vae.dtype == bb16.text_encoder.dtype == bb16.denoiser.dtype == torch.bfloat16
    cond = bb16.encode_prompts(PROMPTS[:1])
    s = bb16.sigmas(2)
    x = noise_for(bb16, 1).requires_grad_(True)
    x0 = _predict(bb16, bb16.denoiser, x, s[0], cond, 3.0)
    frames = bb16.decode(x0)
    assert x0.dtype == frames.dtype == torch.float32 and torch.isfinite(frames).all()
    frames.mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_lora_targets_exist_in_the_architecture(bb):
    names = [n for n, _ in bb.denoiser.named_modules()]
    for target in bb.lora_target_modules:
        assert any(n == target or n.endswith("." + target) for n in names), target


# ----------------------------------------------------------------------------- export


def _pipeline_call(pipe, call: dict, noise: torch.Tensor, sigma0: float, output_type: str = "pt") -> torch.Tensor:
    """The exported pipeline called with the manifest's arguments from the given noise, as [B, 3, F, H, W]."""
    with torch.no_grad():
        # rollout starts at σ_0·noise (σ_0 = 1 − 1e-6 here); WanPipeline takes its latents as given
        out = pipe(PROMPTS[:1], latents=noise * sigma0, output_type=output_type, **call).frames
    return out if output_type == "latent" else out.permute(0, 2, 1, 3, 4)


@pytest.mark.parametrize("guidance,negative", [(1.0, ""), (3.0, ""), (3.0, "blurry, static")])
def test_export_loads_in_plain_diffusers_and_samples_as_trained(folder, tmp_path, guidance, negative):
    from diffusers import DiffusionPipeline

    bb = build(folder, negative_prompt=negative) if negative else build(folder)
    steps = 2
    out = bb.export(bb.denoiser, tmp_path / "export", steps=steps, guidance_scale=guidance)
    manifest = json.loads((out / "rats_export.json").read_text())
    call = manifest["call"]
    assert manifest["pipeline"] == "WanPipeline" and manifest["format"] == "pipeline"
    assert call == {"num_inference_steps": steps, "height": 16, "width": 16, "guidance_scale": guidance,
                    "num_frames": tiny.NUM_FRAMES, "max_sequence_length": tiny.MAX_SEQUENCE_LENGTH,
                    **({"negative_prompt": negative} if negative else {})}
    assert manifest["num_frames"] == tiny.NUM_FRAMES and manifest["dtype"] == "float32"
    assert manifest["scheduler"]["solver_order"] == 1 and "every step" in manifest["scheduler"]["disable_corrector"]
    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe).__name__ == "WanPipeline" and type(pipe.scheduler).__name__ == "UniPCMultistepScheduler"
    noise = noise_for(bb, 1, seed=3)
    sigma0 = float(bb.sigmas(steps)[0])
    theirs = _pipeline_call(pipe, call, noise, sigma0, output_type="latent")
    ours = sample(bb, bb.denoiser, PROMPTS[:1], steps, noise=noise, guidance_scale=guidance, decode=False)
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-4, atol=1e-5 * float(theirs.abs().max()))
    theirs = _pipeline_call(pipe, call, noise, sigma0)
    ours = sample(bb, bb.denoiser, PROMPTS[:1], steps, noise=noise, guidance_scale=guidance)
    assert theirs.shape == ours.shape == (1, 3, tiny.NUM_FRAMES, tiny.RESOLUTION, tiny.RESOLUTION)
    torch.testing.assert_close(ours, theirs.float(), rtol=0, atol=2e-4)


def test_export_writes_every_component_in_one_dtype(folder, tmp_path):
    """A bf16 backbone exports float32 throughout by default (what a plain ``from_pretrained`` loads as it
    is), or one 16-bit dtype with ``dtype=``, loaded with ``torch_dtype`` as the manifest's usage line says.
    The bf16 Wan transformer's first parameter is an fp32-kept table: the cast must not stop at it."""
    from diffusers import WanPipeline
    from safetensors import safe_open

    def dtypes(directory: Path) -> set[str]:
        seen = set()
        for f in directory.glob("*/*.safetensors"):
            with safe_open(str(f), "pt") as h:
                seen |= {str(h.get_slice(k).get_dtype()) for k in h.keys()}
        return seen

    def params(pipe) -> set[torch.dtype]:
        return {p.dtype for m in (pipe.transformer, pipe.vae, pipe.text_encoder) for p in m.parameters()}

    bb = build(folder, dtype="bf16", denoiser_dtype="bf16")
    assert next(bb.denoiser.parameters()).dtype == torch.float32 and bb.denoiser.dtype == torch.bfloat16
    out = bb.export(bb.denoiser, tmp_path / "fp32", steps=2)
    manifest = json.loads((out / "rats_export.json").read_text())
    assert dtypes(out) == {"F32"} and manifest["dtype"] == "float32"
    assert manifest["usage"].startswith("pipe = DiffusionPipeline.from_pretrained(DIR); video = pipe(")
    assert bb.vae.dtype == bb.text_encoder.dtype == bb.denoiser.dtype == torch.bfloat16  # live parts untouched
    plain = WanPipeline.from_pretrained(out)
    assert params(plain) == {torch.float32}
    out16 = bb.export(bb.denoiser, tmp_path / "bf16", steps=2, dtype="bf16")
    manifest16 = json.loads((out16 / "rats_export.json").read_text())
    assert dtypes(out16) == {"BF16"} and "torch_dtype=torch.bfloat16" in manifest16["usage"]
    pipe16 = WanPipeline.from_pretrained(out16, torch_dtype=torch.bfloat16)
    assert {pipe16.transformer.dtype, pipe16.vae.dtype, pipe16.text_encoder.dtype} == {torch.bfloat16}
    for p in (plain, pipe16):
        with torch.no_grad():
            video = p(PROMPTS[0], output_type="pt", **manifest["call"]).frames
        assert video.shape == (1, tiny.NUM_FRAMES, 3, 16, 16) and torch.isfinite(video.float()).all()
    assert dtypes(bb.export(bb.denoiser, tmp_path / "fp16", steps=2, dtype="fp16")) == {"F16"}
    with pytest.raises(ValueError, match="export dtype must be one of"):
        bb.export(bb.denoiser, tmp_path / "bad", steps=2, dtype="int8")


def test_lora_export_merged_pipeline_and_lora_only(folder, tmp_path):
    from diffusers import WanPipeline
    from peft import LoraConfig, inject_adapter_in_model

    bb = build(folder)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=bb.lora_target_modules, init_lora_weights=False)
    student = inject_adapter_in_model(config, bb.denoiser)
    cond = bb.encode_prompts(PROMPTS)
    s = bb.sigmas(4)
    x = noise_for(bb) * s[1]

    def x0(net):
        with torch.no_grad():
            return bb.predict_x0(net, x, s[1], cond)

    expected = x0(student)
    base = WanPipeline.from_pretrained(folder)
    assert not torch.allclose(x0(base.transformer), expected, atol=1e-3), "the LoRA should change the output"
    merged = WanPipeline.from_pretrained(bb.export(student, tmp_path / "full", steps=4))
    assert not any("lora" in n for n, _ in merged.transformer.named_parameters())
    torch.testing.assert_close(x0(merged.transformer), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    lora_dir = bb.export(student, tmp_path / "lora", steps=4, lora_only=True)
    manifest = json.loads((lora_dir / "rats_export.json").read_text())
    assert manifest["format"] == "lora" and manifest["diffusers_lora"] is True
    base.load_lora_weights(lora_dir)
    torch.testing.assert_close(x0(base.transformer), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


# ----------------------------------------------------------------------------- missing weights


def test_missing_weights_name_the_model_and_the_override(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        get_registry().build("backbones", "wan", {})
    msg = str(err.value)
    assert "Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in msg and "backbone.path=" in msg and "\n" not in msg
    assert time.perf_counter() - start < 10


def test_a_folder_of_another_architecture_is_a_user_error(tmp_path):
    (tmp_path / "flux").mkdir()
    (tmp_path / "flux" / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    for sub in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        (tmp_path / "flux" / sub).mkdir()
        (tmp_path / "flux" / sub / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="backbone.name=flux"):
        get_registry().build("backbones", "wan", {"path": str(tmp_path / "flux")})


# ----------------------------------------------------------------------------- image rewards on video


def brightness(images, prompts):
    return images.mean(dim=(1, 2, 3))


class VideoMotion:
    """A reward that scores whole videos: mean absolute change between consecutive frames."""

    scores_video = True

    def __call__(self, videos, prompts):
        assert videos.dim() == 5
        return (videos[:, :, 1:] - videos[:, :, :-1]).abs().mean(dim=(1, 2, 3, 4))


def test_frame_indices_are_evenly_spaced_with_both_ends():
    assert frame_indices(81, 8) == [0, 11, 23, 34, 46, 57, 69, 80]
    assert frame_indices(5, 3) == [0, 2, 4] and frame_indices(5, 2) == [0, 4] and frame_indices(5, 1) == [2]
    assert frame_indices(5, None) == frame_indices(5, 5) == frame_indices(5, 9) == [0, 1, 2, 3, 4]
    for f in range(1, 40):
        for n in range(1, f + 1):
            idx = frame_indices(f, n)
            assert len(set(idx)) == n and idx == sorted(idx) and 0 <= idx[0] and idx[-1] < f
    with pytest.raises(ValueError, match="frames must be >= 1"):
        frame_indices(5, 0)


def test_image_reward_on_video_is_the_mean_over_the_picked_frames():
    torch.manual_seed(0)
    video = torch.rand(2, 3, 5, 8, 8, requires_grad=True)
    per_frame = video.detach().mean(dim=(1, 3, 4))  # [B, F] brightness of every frame, by hand
    everything = RewardSet([WeightedReward("bright", brightness, frames=None)])
    total, parts = everything(video, PROMPTS)
    torch.testing.assert_close(total, per_frame.mean(dim=1))
    torch.testing.assert_close(parts["bright"], per_frame.mean(dim=1))
    ends = WeightedReward("bright", brightness, frames=2, weight=3.0)
    torch.testing.assert_close(RewardSet([ends])(video, PROMPTS)[0], 3.0 * per_frame[:, [0, 4]].mean(dim=1))
    # the gradient reaches exactly the scored frames
    RewardSet([ends])(video, PROMPTS)[0].sum().backward()
    touched = video.grad.abs().sum(dim=(0, 1, 3, 4)) > 0
    assert touched.tolist() == [True, False, False, False, True]
    # each frame is scored with its own video's prompt
    seen = []
    score_frames(lambda im, p: seen.extend(p) or im.mean(dim=(1, 2, 3)), video.detach(), PROMPTS, frames=3)
    assert seen == [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3
    # images are passed through unchanged
    images = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(everything(images, PROMPTS)[0], brightness(images, PROMPTS))


def test_a_reward_declaring_scores_video_gets_whole_videos():
    assert SCORES_VIDEO_ATTRIBUTE == "scores_video"
    video = torch.rand(2, 3, 5, 8, 8)
    motion = VideoMotion()
    total, _ = RewardSet([WeightedReward("motion", motion, frames=2)])(video, PROMPTS)
    torch.testing.assert_close(total, motion(video, PROMPTS))
    assert not torch.allclose(total, torch.zeros(2))


def test_a_frame_wise_reward_of_the_wrong_shape_names_the_reward_and_plugin():
    bad = WeightedReward("flat", lambda im, p: im.mean().reshape(1), plugin="my-plugin")
    with pytest.raises(PluginError, match=r"reward 'flat' returned shape \(1,\), expected \[10\].*my-plugin"):
        bad.score(torch.rand(2, 3, 5, 8, 8), PROMPTS)


def test_every_registered_image_reward_contract_also_holds_on_video_frames():
    """toy-brightness through the adapter: [B] scores with a gradient to the frames."""
    reward = WeightedReward("toy-brightness", get_registry().build("rewards", "toy-brightness", {}))
    video = torch.rand(2, 3, 9, 16, 16, requires_grad=True)
    scores = reward.score(video, PROMPTS)
    assert scores.shape == (2,)
    scores.sum().backward()
    assert torch.isfinite(video.grad).all() and video.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- evaluating videos


def test_evaluation_scores_video_frames_and_saves_each_video_as_a_gif(bb, tmp_path):
    """``rats eval``'s sampling on the tiny Wan: samples are videos ``[B, 3, F, H, W]``, an image reward
    scores their picked frames, ``--save-images`` writes each as an animated GIF of every frame."""
    import numpy as np
    from PIL import Image, ImageSequence

    from rats_core.evaluation.compare import compare
    from rats_core.evaluation.evaluate import Variant

    rewards = RewardSet([WeightedReward("bright", brightness, frames=2)])
    comp = compare(bb, rewards, [Variant("base", bb.denoiser, 2)], PROMPTS, save_dir=tmp_path / "images")
    videos = comp.images["base@2"]
    assert videos.shape == (2, 3, tiny.NUM_FRAMES, tiny.RESOLUTION, tiny.RESOLUTION)
    first_and_last = videos[:, :, [0, -1]].mean(dim=(1, 3, 4)).mean(dim=1)
    torch.testing.assert_close(comp.scores["base@2"], first_and_last)
    index = [json.loads(line) for line in (tmp_path / "images" / "index.jsonl").read_text().splitlines()]
    assert [r["file"] for r in index] == ["base_2steps/00000.gif", "base_2steps/00001.gif"]
    with Image.open(tmp_path / "images" / index[1]["file"]) as gif:
        frames = [torch.tensor(np.array(f.convert("RGB")), dtype=torch.float32) for f in ImageSequence.Iterator(gif)]
    assert len(frames) == tiny.NUM_FRAMES
    for k, frame in enumerate(frames):  # each frame of the video, within the GIF's 256-colour palette
        assert (frame - videos[1, :, k].permute(1, 2, 0) * 255).abs().mean() < 1


# ----------------------------------------------------------------------------- the experiment config


def test_experiment_config_validates():
    from rats_core.config import check_components, load_config

    path = REPO / "experiments" / "wan.yaml"
    cfg = load_config(path)
    check_components(cfg, source=str(path))
    assert cfg.backbone.name == "wan" and cfg.teacher.steps == 50 and cfg.teacher.kind == "ema"
    header = path.read_text().split("\n\n")[0]
    assert "rats-run experiments/wan.yaml" in header and "GB" in header and "PLACEHOLDER" not in header


# ----------------------------------------------------------------------------- end to end


LOAD_WITHOUT_RATS = textwrap.dedent(
    """
    import sys, os, json
    import torch
    from diffusers import WanPipeline
    pipe = WanPipeline.from_pretrained(sys.argv[1])
    call = json.load(open(os.path.join(sys.argv[1], "rats_export.json")))["call"]
    video = pipe(prompt="a photo of a cat", generator=torch.Generator().manual_seed(0), output_type="np",
                 **call).frames[0]
    assert "rats_core" not in sys.modules and "rats_plugins" not in sys.modules
    dtypes = {str(m.dtype) for m in (pipe.transformer, pipe.vae, pipe.text_encoder)}
    print(json.dumps({"shape": list(video.shape), "finite": bool((video == video).all()), "dtypes": sorted(dtypes)}))
    """
)


@pytest.mark.slow
def test_rats_run_on_the_experiment_config_trains_and_exports_for_plain_diffusers(folder, tmp_path, run_without_rats):
    """The issue's "done when": ``rats-run experiments/wan.yaml backbone.path=<tiny Wan>`` trains a few
    steps (LoRA, EMA teacher, a frame-wise image reward) and exports a folder that ``WanPipeline`` alone
    samples, in a process that never imports rats. The end-of-run report and ``rats sample`` handle the
    videos: a grid of frame strips, an animated GIF or a frame-strip PNG."""
    from rats_core.cli import main, run_main
    from safetensors.torch import load_file

    out = tmp_path / "run"
    overrides = [
        f"backbone.path={folder}", f"backbone.resolution={tiny.RESOLUTION}", f"backbone.width={tiny.RESOLUTION}",
        f"backbone.num_frames={tiny.NUM_FRAMES}", f"backbone.max_sequence_length={tiny.MAX_SEQUENCE_LENGTH}",
        "backbone.device=cpu", "backbone.dtype=fp32", "backbone.vae_dtype=fp32", "backbone.denoiser_dtype=fp32",
        "backbone.gradient_checkpointing=false", f"output_dir={out}", "train.steps=2", "train.batch_size=1",
        "train.gradient_accumulation=1", "train.device=cpu", "train.precision=fp32", "train.progress=false",
        "train.checkpoint_every=0", "train.warmup_steps=0", "train.lr=0.01", "student.steps=2", "teacher.steps=4",
        "student.lora.rank=4", "student.lora.alpha=4",
        "rewards=[{name: toy-brightness, weight: 10.0}]", "deepspeed={zero_optimization: {stage: 0}}",
        "data.prompts=[a photo of a cat, a red car]", "data.eval_prompts=null",
    ]
    assert run_main([str(REPO / "experiments" / "wan.yaml"), *overrides]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    lora = load_file(str(out / "export_lora" / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in lora.items())
    from PIL import Image

    report = json.loads((out / "report.json").read_text())
    assert {"base", "teacher", "student"} <= set(report["held_out"]) and (out / "report" / "grid.png").stat().st_size
    assert main(["sample", str(out), "a red car", "-o", str(tmp_path / "car.gif")]) == 0
    assert main(["sample", str(out), "a red car", "-o", str(tmp_path / "car.png"), "--scale", "2"]) == 0
    with Image.open(tmp_path / "car.gif") as gif, Image.open(tmp_path / "car.png") as png:
        assert (gif.n_frames, gif.size) == (tiny.NUM_FRAMES, (tiny.RESOLUTION, tiny.RESOLUTION))
        assert png.size == (2 * (3 * tiny.RESOLUTION + 2), 2 * tiny.RESOLUTION)  # frames 1, 3, 5 and 2 gaps
    # the full pipeline folder, LoRA merged, through `rats export`
    export = tmp_path / "pipeline"
    assert main(["export", str(out), "-o", str(export)]) == 0
    manifest = json.loads((export / "rats_export.json").read_text())
    assert manifest["pipeline"] == "WanPipeline" and manifest["num_inference_steps"] == 2
    assert manifest["lora_merged"] is True and manifest["call"]["num_frames"] == tiny.NUM_FRAMES
    proc = run_without_rats(LOAD_WITHOUT_RATS, export, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"shape": [tiny.NUM_FRAMES, tiny.RESOLUTION, tiny.RESOLUTION, 3], "finite": True,
                      "dtypes": ["torch.float32"]}
