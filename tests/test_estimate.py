"""`rats estimate` and the shipped architectures: parameter counts against the published ones, the byte
arithmetic of the precision policy and ZeRO stages, the saved-tensor trace against hand counts, the CLI."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from rats_core import estimate as est
from rats_core.cli import main
from rats_core.config import load_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "plugins"))


def _arch_names():
    from rats_plugins import archs

    return archs.names()


def _tolerance(published: float) -> float:
    """1 %, or half a unit of the published figure's last digit when it was rounded harder (0.6 B)."""
    digits = f"{published:.3e}".split("e")[0].rstrip("0").rstrip(".")
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    half_unit = 0.5 * 10 ** (math.floor(math.log10(published)) - decimals)
    return max(0.01 * published, half_unit)


@pytest.mark.parametrize("name", _arch_names())
def test_shipped_architectures_match_published_parameter_counts(name):
    arch = est.load_arch(name)
    assert arch["published"], f"{name}: no published count to check against"
    for part, pub in arch["published"].items():
        module = est.build_part(arch["parts"][part])
        n = est.count_params(module)
        if pub.get("counts") == "checkpoint":  # the figure counts every stored tensor, persistent buffers too
            n = sum(t.numel() for t in module.state_dict().values())
        assert abs(n - pub["params"]) <= _tolerance(pub["params"]), (name, part, n, pub)


def test_the_real_denoisers_are_the_sizes_the_issue_names():
    counts = {n: est.count_params(est.build_part(est.load_arch(n)["parts"]["denoiser"]))
              for n in ("sd15", "sdxl", "pixart", "flux", "wan")}
    assert counts["sd15"] == 859_520_964 and counts["sdxl"] == 2_567_463_684
    assert 0.55e9 < counts["pixart"] < 0.65e9 and counts["flux"] == 11_901_408_320
    assert counts["wan"] == 1_418_996_800  # Wan2.1-T2V-"1.3B"


def test_sd35_medium_and_large_are_the_model_cards_sizes_with_their_positional_tables():
    """SD3.5 Medium "2.5 B" and Large "8.1 B" count the checkpoints' tensors; diffusers keeps each model's
    learnt positional table (pos_embed_max_size² × width) as a persistent buffer, not a parameter."""
    for name, params, table in (("sd35", 2_243_171_520, 384 * 384 * 1536), ("sd35-large", 8_056_627_520, 192 * 192 * 2432)):
        den = est.build_part(est.load_arch(name)["parts"]["denoiser"])
        assert est.count_params(den) == params
        assert sum(b.numel() for b in den.buffers()) == table
        assert sum(t.numel() for t in den.state_dict().values()) == params + table


@pytest.mark.slow
def test_sd35_estimate_counts_the_architecture_the_path_names():
    """Offline: Medium by default, Large when backbone.path is its Hub id (no note), and no T5 with t5=false."""
    def run(*overrides):
        cfg = load_config(REPO / "experiments" / "sd35.yaml",
                          ["backbone.resolution=256", "rewards=[{name: toy-brightness}]", *overrides])
        e = est.estimate(cfg, source="x")
        assert not [n for n in e.notes if "backbone" in n], e.notes
        return e

    medium, large = run(), run("backbone.path=stabilityai/stable-diffusion-3.5-large")
    assert (medium.architecture, medium.params["denoiser"]) == ("sd35", 2_243_171_520)
    assert (large.architecture, large.params["denoiser"]) == ("sd35-large", 8_056_627_520)
    assert medium.params["text_encoder_3"] == 4_762_310_656
    assert "text_encoder_3" not in run("backbone.t5=false").params


def test_a_part_builds_on_meta_without_memory_and_for_real_with_random_weights():
    spec = est.load_arch("sd15")["parts"]["text_encoder"]
    small = json.loads(json.dumps(spec))
    small["config"].update(num_hidden_layers=1, hidden_size=32, intermediate_size=37, num_attention_heads=4)
    meta = est.build_part(spec)
    assert all(p.device.type == "meta" for p in meta.parameters())
    real = est.build_part(small, device="cpu")
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in real.parameters())


# ----------------------------------------------------------------------------- the trace


def test_trace_counts_what_autograd_saves_by_hand():
    lin = nn.Linear(8, 16)  # weight requires grad: linear saves its input (parameters excluded)
    x = torch.zeros(3, 8)
    t = est.trace(lambda: torch.relu(lin(x)), [lin])
    assert t.saved == 3 * 8 * 4 + 3 * 16 * 4  # linear's input + relu's output, float32
    # nothing requires grad: nothing is saved
    lin.requires_grad_(False)
    assert est.trace(lambda: torch.relu(lin(x)), [lin]).saved == 0


def test_trace_on_meta_equals_trace_on_cpu():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(), nn.Conv2d(8, 4, 3))
    cpu = est.trace(lambda: net(torch.zeros(2, 3, 16, 16, requires_grad=True)), [net]).saved
    meta_net = net.to("meta")
    meta = est.trace(lambda: meta_net(torch.zeros(2, 3, 16, 16, device="meta", requires_grad=True)), [meta_net]).saved
    assert cpu == meta > 0


def test_fused_attention_keeps_q_k_v_output_and_logsumexp():
    q = torch.zeros(2, 4, 64, 8, device="meta", requires_grad=True)
    k = torch.zeros(2, 4, 32, 8, device="meta", requires_grad=True)
    v = torch.zeros(2, 4, 32, 8, device="meta", requires_grad=True)
    t = est.trace(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), [])
    # not the 64×32 score matrix: q + k + v + out (fp32) + lse [2, 4, 64] fp32
    assert t.saved == 4 * (2 * 4 * 64 * 8 + 2 * 2 * 4 * 32 * 8 + 2 * 4 * 64 * 8 + 2 * 4 * 64)


def test_checkpointed_units_keep_their_inputs_and_count_as_recompute_peak():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=4, norm_num_groups=4,
    ).to("meta")
    spec = {"class": "UNet2DConditionModel"}
    fn, inputs = est.denoiser_call(spec, unet, 2, 8, 5, torch.device("meta"), torch.float32)
    unet.train()
    plain = est.trace(fn, [unet], [unet], inputs)
    unet.enable_gradient_checkpointing()
    ckpt = est.trace(fn, [unet], [unet], inputs)
    assert plain.max_unit == 0 and 0 < ckpt.max_unit < plain.saved
    assert ckpt.saved < plain.saved


# ----------------------------------------------------------------------------- the estimate


@pytest.fixture(scope="module")
def tiny_sd15(tmp_path_factory):
    import tiny_pipelines as tiny

    return tiny.build_sd15(tmp_path_factory.mktemp("sd15") / "pipe")


def _tiny_cfg(folder: Path, *overrides: str):
    return load_config(REPO / "benchmarks" / "configs" / "tiny_sd15.yaml", [f"backbone.path={folder}", *overrides])


def test_estimate_reads_a_local_pipeline_folder_and_counts_exactly(tiny_sd15):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    e = est.estimate(_tiny_cfg(tiny_sd15), source="tiny")
    unet = UNet2DConditionModel.from_pretrained(tiny_sd15 / "unet")
    text = CLIPTextModel.from_pretrained(tiny_sd15 / "text_encoder")
    assert e.params["denoiser"] == e.params["trainable"] == sum(p.numel() for p in unet.parameters())
    assert e.params["text_encoder"] == sum(p.numel() for p in text.parameters())
    assert e.architecture == "pipe"


def test_bytes_follow_the_precision_policy_and_zero_stages(tiny_sd15):
    cfg = _tiny_cfg(tiny_sd15, "train.precision=bf16", "deepspeed.zero_optimization.stage=2")
    e = est.estimate(cfg, ranks=4, source="tiny")
    pt = e.params["trainable"]
    rows = {s: {p.name: p.bytes for p in e.parts[s]} for s in e.parts}
    assert rows[0]["trainable weights (fp32)"] == pt * 4 and rows[0]["Adam m, v (fp32)"] == pt * 8
    assert rows[0]["bf16 autocast weight copies"] == pt * 2 and "ZeRO fp32 partition copy" not in rows[0]
    assert rows[1]["Adam m, v (fp32)"] == pt * 8 / 4 and rows[1]["gradients (fp32)"] == pt * 4
    assert rows[2]["gradients (fp32)"] == pt * 4 / 4 and rows[2]["trainable weights (fp32)"] == pt * 4
    assert rows[3]["trainable weights (fp32)"] == pt * 4 / 4
    assert rows[0]["teacher (ema)"] == pt * 4 and rows[3]["teacher (ema)"] == pt * 4 / 4
    assert e.stage == 2 and e.per_rank(3) < e.per_rank(0)


def test_lora_counts_adapters_and_shares_the_base_below_zero3(tiny_sd15):
    cfg = _tiny_cfg(tiny_sd15, "student.lora={rank: 2}", "backbone.denoiser_dtype=bf16")
    e = est.estimate(cfg, source="tiny")
    assert 0 < e.params["trainable"] < e.params["denoiser"]
    rows = {s: {p.name: p.bytes for p in e.parts[s]} for s in e.parts}
    assert rows[0]["frozen denoiser base"] == e.params["denoiser"] * 2  # bf16 base
    assert rows[0]["teacher (ema)"] == e.params["trainable"] * 4  # adapters only
    assert rows[3]["teacher (ema)"] == e.params["trainable"] * 4 + e.params["denoiser"] * 2


def test_offload_moves_optimizer_state_off_the_gpu(tiny_sd15):
    cfg = _tiny_cfg(tiny_sd15, "deepspeed.zero_optimization={stage: 2, offload_optimizer: {device: cpu}}")
    e = est.estimate(cfg, source="tiny")
    assert "Adam m, v (fp32)" in e.to_dict()["stages"]["2"]["offloaded"]
    assert e.per_rank(2, "cpu") > 0 and e.per_rank(0, "cpu") == 0


def test_activations_grow_with_batch_and_checkpointing_saves_memory(tiny_sd15):
    def act(*o):
        e = est.estimate(_tiny_cfg(tiny_sd15, *o), source="tiny")
        return {p.name: p.bytes for p in e.parts[0]}

    one, four = act("train.batch_size=1"), act("train.batch_size=4")
    # about linear in the batch (a few saved tensors do not scale with it)
    assert 3.5 < four["activations: VAE decode"] / one["activations: VAE decode"] < 4.5
    assert act("student.gradient_checkpointing=true")["activations: student"] < act()["activations: student"]


# ----------------------------------------------------------------------------- the command


def test_rats_estimate_json_and_errors(tiny_sd15, capsys):
    assert main(["estimate", str(REPO / "benchmarks/configs/tiny_sd15.yaml"), f"backbone.path={tiny_sd15}",
                 "--json", "--ranks", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["stages"]) == {"0", "1", "2", "3"} and out["ranks"] == 2
    assert {"per_rank_gib", "fits", "parts_gib"} <= set(out["stages"]["3"]) and "precision.py" in out["policy"]
    assert main(["estimate", str(REPO / "benchmarks/configs/tiny_sd15.yaml"), "--ranks", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --ranks must be at least 1")


def test_validate_adds_the_estimate_line_for_gpu_configs_only(tiny_sd15, capsys):
    cfg = str(REPO / "benchmarks/configs/tiny_sd15.yaml")
    assert main(["validate", cfg, f"backbone.path={tiny_sd15}", "train.device=cuda"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("estimate: ~")]
    assert len(lines) == 1 and "per GPU at ZeRO-0" in lines[0]
    assert main(["validate", cfg, f"backbone.path={tiny_sd15}", "train.device=cpu"]) == 0
    assert "estimate:" not in capsys.readouterr().out


@pytest.mark.slow
def test_sdxl_estimate_offline_has_every_stage_and_the_published_unet(capsys):
    """The issue's acceptance check: `rats estimate experiments/sdxl.yaml --json` (tens of seconds)."""
    assert main(["estimate", str(REPO / "experiments/sdxl.yaml"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["stages"]) == {"0", "1", "2", "3"} and out["zero_stage"] == 2
    assert abs(out["published"]["denoiser"]["ratio"] - 1) < 0.01
    assert all(out["stages"][s]["per_rank_gib"] > 5 for s in out["stages"])


@pytest.mark.slow
def test_wan_estimate_offline_has_every_stage_and_the_published_transformer(capsys):
    """`rats estimate experiments/wan.yaml --json` without the weights (~15 s): the shipped Wan2.1-T2V-1.3B
    architecture, its transformer exactly the published count, 33 frames of 480x832 traced on meta."""
    assert main(["estimate", str(REPO / "experiments/wan.yaml"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["stages"]) == {"0", "1", "2", "3"} and out["zero_stage"] == 2 and out["architecture"] == "wan"
    assert out["params"]["denoiser"] == 1_418_996_800 and out["published"]["denoiser"]["ratio"] == 1.0
    assert all(abs(v["ratio"] - 1) < 0.01 for v in out["published"].values()), out["published"]
    assert out["notes"] == []
    parts = out["stages"]["2"]["parts_gib"]
    # the differentiable decode (2 latent frames with a gradient) is the largest activation; UMT5-XXL in bf16
    assert parts["activations: VAE decode"] == max(v for k, v in parts.items() if k.startswith("activations"))
    assert 10 < parts["frozen text_encoder"] < 11
    assert out["stages"]["2"]["fits"] == {"24GB": False, "40GB": False, "80GB": True}


@pytest.fixture(scope="module")
def tiny_wan_pipe(tmp_path_factory):
    import tiny_wan

    return tiny_wan.build_wan(tmp_path_factory.mktemp("wan") / "pipe")


def _wan_cfg(*overrides: str):
    return load_config(REPO / "experiments" / "wan.yaml", ["backbone.resolution=16", "backbone.width=32",
                                                           "backbone.num_frames=9", *overrides])


def test_wan_denoiser_inputs_are_video_latents_and_umt5_states():
    import tiny_wan

    net = tiny_wan.wan_transformer().to("meta")
    fn, inputs = est.denoiser_call({"class": "WanTransformer3DModel"}, net, 2, (2, 4), 12, torch.device("meta"),
                                   torch.float32, frames=3)
    assert [tuple(x.shape) for x in inputs] == [(2, 16, 3, 2, 4), (2,), (2, 12, 32)]
    assert tuple(fn()[0].shape) == (2, 16, 3, 2, 4)
    spec = est.load_arch("wan")["parts"]["denoiser"]
    assert est.text_length(_wan_cfg(), spec) == 512  # UMT5 padded as WanPipeline pads it
    assert est.text_length(_wan_cfg("backbone.max_sequence_length=226"), spec) == 226


def test_wan_decode_traced_on_meta_equals_cpu_and_decode_grad_frames_bounds_it():
    """The backbone's own frame-by-frame decode (a causal cache between latent frames) traces the same on meta."""
    import tiny_wan

    def saved(device, grad_frames):
        vae = tiny_wan.wan_vae().to(device)
        z = torch.zeros(2, 16, 3, 4, 6, device=device, requires_grad=True)
        decode = est.video_decode("WanTransformer3DModel", vae, grad_frames)
        return est.trace(lambda: decode(z), [vae], [], [z]).saved

    every, one = saved("cpu", None), saved("cpu", 1)
    assert every == saved("meta", None) and one == saved("meta", 1) and 0 < one < every


def test_wan_estimate_reads_a_local_pipeline_folder_and_traces_videos(tiny_wan_pipe):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5EncoderModel

    def rows(*o):
        e = est.estimate(_wan_cfg(f"backbone.path={tiny_wan_pipe}", "backbone.max_sequence_length=12", *o),
                         source="tiny")
        return e, {p.name: p.bytes for p in e.parts[2]}

    e, base = rows()
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert e.params["denoiser"] == n(WanTransformer3DModel.from_pretrained(tiny_wan_pipe / "transformer"))
    assert e.params["vae"] == n(AutoencoderKLWan.from_pretrained(tiny_wan_pipe / "vae"))
    assert e.params["text_encoder"] == n(UMT5EncoderModel.from_pretrained(tiny_wan_pipe / "text_encoder"))
    assert e.architecture == "pipe" and e.notes == [] and 0 < e.params["trainable"]  # LoRA adapters
    assert "batch 1, 9 frames of 16x32 px, 2 of 3 latent frames with a gradient" in {p.note for p in e.parts[2]}
    # decode_grad_frames bounds the decode (wan.yaml: 2 latent frames); null keeps every frame's graph
    assert base["activations: VAE decode"] < rows("backbone.decode_grad_frames=null")[1]["activations: VAE decode"]
    # an image reward scores `frames` evenly spaced frames of each video in one batch
    one = rows("rewards=[{name: hpsv2.1, frames: 1}]")[1]["activations: rewards"]
    two = rows("rewards=[{name: hpsv2.1, frames: 2}]")[1]["activations: rewards"]
    assert 1.9 < two / one < 2.1
    # guidance in the student's call doubles its batch (cond + uncond in one pass)
    assert 1.8 < rows("student.guidance_scale=3")[1]["activations: student"] / base["activations: student"] < 2.2


def test_a_hub_path_other_than_the_shipped_model_is_noted():
    """Without a local folder the shipped 1.3B architecture is counted; the 14B repository is named in a note."""
    e = est.estimate(_wan_cfg("backbone.path=Wan-AI/Wan2.1-T2V-14B-Diffusers"), source="x")
    assert e.params["denoiser"] == 1_418_996_800
    assert len(e.notes) == 1 and "Wan-AI/Wan2.1-T2V-14B-Diffusers is not a local folder" in e.notes[0]
    assert est.estimate(_wan_cfg(), source="x").notes == []


def test_markdown_table_divides_model_states_over_ranks(tiny_sd15):
    e = est.estimate(_tiny_cfg(tiny_sd15, "train.precision=fp32"), source="tiny")
    table = est.markdown(e, ranks=(1, 4)).splitlines()
    assert table[0].startswith("| GPUs | ZeRO-0 (config) | ZeRO-1")
    assert [row.split("|")[1].strip() for row in table[2:]] == ["1", "4"]
    four = e.with_ranks(4)
    # ZeRO-3 on 4 ranks: the trainable weights, gradients and Adam state are a quarter each
    assert math.isclose(e.per_rank(3) - four.per_rank(3), 0.75 * e.params["trainable"] * 20, rel_tol=1e-9)
    assert e.per_rank(0) == four.per_rank(0)


@pytest.mark.slow
def test_the_will_it_fit_table_in_the_docs_is_what_the_command_prints():
    """docs/backbones.md's tables come from `rats estimate experiments/<b>.yaml --markdown` (checked for sd15
    and the video backbone, wan), run as a user runs it: in its own process (earlier tests in this one register
    tiny models, e.g. a tiny open_clip config, that would change the figures)."""
    import subprocess
    import sys

    docs = (REPO / "docs" / "backbones.md").read_text()
    for name in ("sd15", "wan"):
        proc = subprocess.run([sys.executable, "-m", "rats_core.cli", "estimate", f"experiments/{name}.yaml",
                               "--markdown"], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        table = proc.stdout.strip()
        assert f"rats estimate experiments/{name}.yaml --markdown" in docs and table in docs, name


def test_student_calls_with_a_graph_follow_grad_steps_and_horizons():
    cfg = lambda *o: load_config(REPO / "experiments/sd15.yaml", list(o))  # noqa: E731
    assert est.student_grad_evals(cfg()) == 4  # horizons "all": every one of K = 4 steps is matched
    assert est.student_grad_evals(cfg("loss.alpha=0")) == 1  # reward only: the last K_grad step
    assert est.student_grad_evals(cfg("loss.alpha=0", "student.grad_steps=3")) == 3
    assert est.student_grad_evals(cfg("student.horizon_gradients=false")) == 1


def test_rewards_are_counted_from_a_local_model_folder_when_given(tiny_sd15, tmp_path):
    import tiny_rewards
    from transformers import CLIPModel

    model_dir, proc = tiny_rewards.build_pickscore(tmp_path)
    cfg = _tiny_cfg(tiny_sd15, f"rewards=[{{name: pickscore, path: {model_dir}, processor: {proc}}}]")
    e = est.estimate(cfg, source="tiny")
    assert e.params["reward pickscore"] == sum(p.numel() for p in CLIPModel.from_pretrained(model_dir).parameters())
    # without a folder: the shipped CLIP ViT-H/14
    full = est.estimate(_tiny_cfg(tiny_sd15, "rewards=[{name: pickscore}]"), source="tiny")
    assert full.params["reward pickscore"] == 986_109_441


def test_aesthetic_and_clipscore_are_counted_from_the_shipped_or_a_local_clip(tiny_sd15, tmp_path):
    """From the shipped CLIP ViT-L/14 architecture without weights, and exactly from local folders:
    aesthetic counts what it keeps (vision tower, projection, MLP head), clipscore the whole CLIP."""
    import tiny_rewards
    from transformers import CLIPModel

    from rats_core.registry.plugins import get_registry

    e = est.estimate(_tiny_cfg(tiny_sd15, "rewards=[{name: aesthetic}, {name: clipscore}]"), source="tiny")
    assert e.params["reward aesthetic"] == 303_966_208 + 927_969  # ViT-L/14 image tower + 768-1024-128-64-16-1
    assert e.params["reward clipscore"] == 427_616_513
    assert not [n for n in e.notes if "reward" in n], e.notes
    pth, clip_dir, _ = tiny_rewards.build_aesthetic(tmp_path / "aesthetic")
    cs_dir = tiny_rewards.build_clip(tmp_path / "clipscore")
    rewards = f"rewards=[{{name: aesthetic, path: {pth}, clip: {clip_dir}}}, {{name: clipscore, path: {cs_dir}}}]"
    e = est.estimate(_tiny_cfg(tiny_sd15, rewards), source="tiny")
    aesthetic = get_registry().build("rewards", "aesthetic", {"path": str(pth), "clip": str(clip_dir)}, "rewards.0")
    assert e.params["reward aesthetic"] == sum(p.numel() for p in aesthetic.parameters())
    assert e.params["reward clipscore"] == sum(p.numel() for p in CLIPModel.from_pretrained(cs_dir).parameters())


def test_validate_line_never_fails_the_validation(tiny_sd15, monkeypatch):
    cfg = _tiny_cfg(tiny_sd15)
    assert est.validate_line(cfg, "x").startswith("estimate: ~")

    def no_weights(*a, **k):
        raise RuntimeError("no such weights")

    monkeypatch.setattr("rats_core.estimate.tables.estimate", no_weights)  # where validate_line looks it up
    assert est.validate_line(cfg, "x") == "estimate: not available for this config (no such weights)"


def test_estimate_ranks_default_to_the_launcher_or_one_and_eight(monkeypatch):
    from rats_core.estimate import default_ranks

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert default_ranks(None) == (1, 8)  # one rank alone makes ZeRO-3 look the worst choice
    assert default_ranks(4) == (4,)
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun / deepspeed
    assert default_ranks(None) == (2,) and default_ranks(8) == (8,)
