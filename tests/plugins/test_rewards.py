"""The real reward plugins (ImageReward, HPSv2/2.1, PickScore) on tiny random models of the real classes.

Every model is saved in its official checkpoint layout and loaded back through the plugin's own loading
code, then compared with an independent implementation of the official scorer on the same inputs.
Preprocessing is compared with the official PIL / torchvision / transformers pipelines on a real photo.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rats_core.errors import CheckpointError, ConfigError, WeightsNotFoundError
from rats_core.registry.plugins import get_registry
from rats_plugins.rewards import _preprocess as P
from rats_plugins.rewards import _weights as W
from rats_plugins.rewards import imagereward as IR

_spec = importlib.util.spec_from_file_location("tiny_rewards", Path(__file__).with_name("tiny_rewards.py"))
T = importlib.util.module_from_spec(_spec)
sys.modules["tiny_rewards"] = T
_spec.loader.exec_module(T)

PROMPTS = [
    "a photo of a red cat",
    # longer than ImageReward's 35 tokens (unknown words split into letters): truncated
    "a zebra playing the xylophone next to a jukebox full of quartz",
]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One tiny model of each reward in its official layout: {name: options for registry.build}."""
    root = tmp_path_factory.mktemp("rewards")
    ir_ckpt, ir_tok, ir_ref = T.build_imagereward(root / "imagereward")
    hps_ckpt, hps_model = T.build_hps(root / "hps")
    hps21_dir = root / "hps21"
    hps21_ckpt, hps21_model = T.build_hps(hps21_dir, filename="HPS_v2.1_compressed.pt", seed=1)
    ps_model, ps_proc = T.build_pickscore(root / "pickscore")
    return {
        "options": {
            "imagereward": {"path": str(ir_ckpt), "tokenizer": str(ir_tok)},
            "hpsv2": {"path": str(hps_ckpt), "architecture": T.TINY_OPEN_CLIP},
            # a folder holding the official file name
            "hpsv2.1": {"path": str(hps21_dir), "architecture": T.TINY_OPEN_CLIP},
            "pickscore": {"path": str(ps_model), "processor": str(ps_proc)},
        },
        "ir_ref": ir_ref,
        "ir_tok": ir_tok,
        "ir_ckpt": ir_ckpt,
        "hps_model": hps_model,
        "hps21_model": hps21_model,
        "ps_model": ps_model,
        "ps_proc": ps_proc,
    }


@pytest.fixture(scope="module")
def rewards(files):
    registry = get_registry()
    return {name: registry.build("rewards", name, opts) for name, opts in files["options"].items()}


@pytest.fixture(scope="module")
def photos():
    """Two real photos (sklearn ships them): uint8 HWC arrays."""
    from sklearn.datasets import load_sample_image

    return [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]


def _tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1).float() / 255.0


def _features(out):
    """transformers 4.x returns a tensor from get_*_features, 5.x an output object."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


# ----------------------------------------------------------------------------- contract, all rewards

NAMES = ["imagereward", "hpsv2", "hpsv2.1", "pickscore"]


def test_all_registered_with_documented_options():
    registry = get_registry()
    for name in NAMES:
        component = registry.get("rewards", name)
        props = component.options_schema()["properties"]
        assert {"path", "dtype"} <= set(props), name
        assert component.doc, name
        assert component.plugin.startswith("rats_plugins.rewards."), component.plugin
    assert "tokenizer" in registry.get("rewards", "imagereward").options_schema()["properties"]
    assert "processor" in registry.get("rewards", "pickscore").options_schema()["properties"]


@pytest.mark.parametrize("name", NAMES)
def test_contract_shape_gradient_frozen_deterministic(rewards, name):
    reward = rewards[name]
    images = torch.rand(2, 3, 40, 56, requires_grad=True)
    scores = reward(images, PROMPTS)
    assert scores.shape == (2,) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0, "gradient must reach the images"
    assert not any(p.requires_grad for p in reward.parameters())
    reward.train()
    assert not reward.training and not any(m.training for m in reward.modules())
    with torch.no_grad():
        again = reward(images.detach(), PROMPTS)
    torch.testing.assert_close(again, scores.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_are_rejected(rewards, name):
    with pytest.raises(ValueError, match="prompts"):
        rewards[name](torch.rand(2, 3, 32, 32), ["one prompt"])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        rewards[name](torch.rand(3, 32, 32), ["x"])


def test_invalid_dtype_is_a_config_error():
    with pytest.raises(ConfigError, match="dtype"):
        get_registry().build("rewards", "pickscore", {"dtype": "float64"})


def test_text_side_is_cached_per_prompt_list(rewards, monkeypatch):
    reward = rewards["pickscore"]
    calls = []
    original = reward.encode_text
    monkeypatch.setattr(reward, "encode_text", lambda p: calls.append(p) or original(p))
    reward._cache.clear()
    images = torch.rand(2, 3, 32, 32)
    first = reward(images, PROMPTS)
    second = reward(images, PROMPTS)  # the teacher's and the student's batch share prompts
    assert len(calls) == 1
    torch.testing.assert_close(first, second)
    reward(images, PROMPTS[::-1])
    assert len(calls) == 2


# ----------------------------------------------------------------------------- ImageReward


def test_imagereward_matches_official_network(files, rewards):
    """Same pixels and tokens: the transformers-based plugin equals the official-layout reference."""
    reward, ref = rewards["imagereward"], files["ir_ref"]
    tok = T.official_bert_tokenizer(files["ir_tok"])
    enc = tok(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    images = torch.rand(2, 3, 50, 38)
    with torch.no_grad():
        expected = ref.score(enc.input_ids, enc.attention_mask, reward.preprocess(images))
        got = reward(images, PROMPTS)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert (expected[0] - expected[1]).abs() > 1e-3  # the comparison is not trivially flat


def _official_imagereward_transform(size: int):
    """ImageReward._transform: PIL Resize(bicubic) → CenterCrop → RGB → ToTensor → Normalize."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    return Compose([
        Resize(size, interpolation=InterpolationMode.BICUBIC), CenterCrop(size),
        lambda im: im.convert("RGB"), ToTensor(), Normalize(P.CLIP_MEAN, P.CLIP_STD),
    ])


def test_imagereward_matches_official_score_on_photos(files, rewards, photos):
    """ImageReward.score(prompt, PIL image) vs the plugin on the photo as a [0, 1] tensor."""
    from PIL import Image

    reward, ref = rewards["imagereward"], files["ir_ref"]
    tok = T.official_bert_tokenizer(files["ir_tok"])
    transform = _official_imagereward_transform(reward.image_size)
    prompt = "a photo of a red house"
    enc = tok(prompt, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    with torch.no_grad():
        for arr in photos:
            expected = ref.score(enc.input_ids, enc.attention_mask, transform(Image.fromarray(arr))[None])
            got = reward(_tensor(arr)[None], [prompt])
            torch.testing.assert_close(got, expected, rtol=0, atol=2e-3)  # uint8 rounding in PIL only


def test_imagereward_tokens_follow_official_scorer(rewards):
    reward = rewards["imagereward"]
    ids, mask = reward.tokenize(PROMPTS)
    tok = reward.tokenizer
    assert ids.shape == (2, 35) and mask.shape == (2, 35)
    assert (ids[:, 0] == tok.cls_token_id).all()  # ImageReward.score never swaps in [ENC]
    assert mask[1].all() and ids[1, -1] == tok.sep_token_id  # truncated at 35
    assert not mask[0].all() and (ids[0][mask[0] == 0] == tok.pad_token_id).all()
    base = len(tok) - 2  # bert-base-uncased: 30522 → [DEC] 30522, [ENC] 30523
    assert tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [base, base + 1]
    assert len(tok) == reward.text.config.vocab_size


def test_imagereward_normalisation_constants(files, tmp_path):
    """An MLP that outputs a constant c scores (c − 0.16717362830052426) / 1.0333394966054072."""
    assert (IR.MEAN, IR.STD) == (0.16717362830052426, 1.0333394966054072)
    state = torch.load(files["ir_ckpt"], weights_only=True)
    state["mlp.layers.7.weight"] = torch.zeros_like(state["mlp.layers.7.weight"])
    state["mlp.layers.7.bias"] = torch.tensor([IR.MEAN + 2 * IR.STD])
    torch.save(state, tmp_path / "ImageReward.pt")
    reward = get_registry().build("rewards", "imagereward", {"path": str(tmp_path), "tokenizer": str(files["ir_tok"])})
    torch.testing.assert_close(reward(torch.rand(2, 3, 32, 32), PROMPTS), torch.full((2,), 2.0))


def test_imagereward_reads_the_real_architecture_from_checkpoint_shapes():
    """The official ImageReward.pt's shapes (built on the meta device: no memory, no weights)."""
    with torch.device("meta"):
        official = T.OfficialImageReward(
            dict(image_size=224, patch=16, dim=1024, depth=24, heads=16),
            dict(vocab=30524, hidden=768, heads=12, layers=12, intermediate=3072, max_pos=512),
        )
    vision, text, mlp = IR.architecture(IR.map_official_state_dict(official.state_dict()))
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (1024, 24, 16)
    assert (vision.image_size, vision.patch_size, vision.intermediate_size, vision.layer_norm_eps) == (224, 16, 4096, 1e-6)
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (768, 12, 12)
    assert (text.vocab_size, text.encoder_hidden_size, text.max_position_embeddings) == (30524, 1024, 512)
    assert mlp == [768, 1024, 128, 64, 16, 1]


def test_imagereward_key_mapping():
    sd = {
        "blip.visual_encoder.cls_token": torch.zeros(1),
        "blip.visual_encoder.pos_embed": torch.zeros(1),
        "blip.visual_encoder.patch_embed.proj.weight": torch.zeros(1),
        "blip.visual_encoder.blocks.11.attn.qkv.weight": torch.zeros(1),
        "blip.visual_encoder.blocks.3.attn.proj.bias": torch.zeros(1),
        "blip.visual_encoder.blocks.0.norm2.weight": torch.zeros(1),
        "blip.visual_encoder.blocks.0.mlp.fc2.bias": torch.zeros(1),
        "blip.visual_encoder.norm.weight": torch.zeros(1),
        "blip.text_encoder.embeddings.position_ids": torch.zeros(1),
        "blip.text_encoder.encoder.layer.0.crossattention.self.key.weight": torch.zeros(1),
        "blip.vision_proj.weight": torch.zeros(1),
        "mlp.layers.7.bias": torch.zeros(1),
    }
    parts = IR.map_official_state_dict(sd)
    assert sorted(parts["vision"]) == sorted([
        "embeddings.class_embedding", "embeddings.position_embedding", "embeddings.patch_embedding.weight",
        "encoder.layers.11.self_attn.qkv.weight", "encoder.layers.3.self_attn.projection.bias",
        "encoder.layers.0.layer_norm2.weight", "encoder.layers.0.mlp.fc2.bias", "post_layernorm.weight",
    ])
    assert list(parts["text"]) == ["encoder.layer.0.crossattention.self.key.weight"]
    assert list(parts["mlp"]) == ["layers.7.bias"]
    with pytest.raises(CheckpointError, match="unexpected vision key"):
        IR.map_official_state_dict({**sd, "blip.visual_encoder.head.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="no mlp weights"):
        IR.map_official_state_dict({k: v for k, v in sd.items() if not k.startswith("mlp.")})


# ----------------------------------------------------------------------------- HPSv2 / v2.1


def _official_hps_pixels(arr: np.ndarray, size: int) -> torch.Tensor:
    """hpsv2's preprocess_val (light_augmentation=True): ToTensor → ResizeMaxSize → Normalize."""
    import torchvision.transforms.functional as TF
    from PIL import Image
    from torchvision.transforms import InterpolationMode

    img = TF.to_tensor(Image.fromarray(arr))
    h, w = img.shape[1:]
    scale = size / float(max(h, w))
    if scale != 1.0:
        new = tuple(round(d * scale) for d in (h, w))
        img = TF.resize(img, new, InterpolationMode.BICUBIC)
        ph, pw = size - new[0], size - new[1]
        img = TF.pad(img, padding=[pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0)
    return TF.normalize(img, P.CLIP_MEAN, P.CLIP_STD)


@pytest.mark.parametrize("name,model_key", [("hpsv2", "hps_model"), ("hpsv2.1", "hps21_model")])
def test_hps_matches_official_scorer(files, rewards, photos, name, model_key):
    """hpsv2.score on a PIL photo == the plugin on the same photo as a [0, 1] tensor."""
    import open_clip

    model, reward = files[model_key], rewards[name]
    tokenizer = open_clip.get_tokenizer(T.TINY_OPEN_CLIP)
    prompt = "a temple on a sunny day"
    with torch.no_grad():
        for arr in photos:
            out = model(_official_hps_pixels(arr, 28)[None], tokenizer([prompt]))
            expected = (out["image_features"] @ out["text_features"].T).diagonal()
            got = reward(_tensor(arr)[None], [prompt])
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
            assert -1.0 <= got.item() <= 1.0  # a cosine, not a logit


def test_hps_versions_default_to_their_own_files():
    from rats_plugins.rewards import hps

    assert hps.REPO_ID == "xswu/HPSv2"
    assert hps.FILENAMES == {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
    assert hps.ARCHITECTURE == "ViT-H-14"


def test_hps_unknown_architecture_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown open_clip architecture 'ViT-Q-99'"):
        get_registry().build("rewards", "hpsv2", {"architecture": "ViT-Q-99"})


def test_hps_rejects_a_checkpoint_of_another_shape(files, tmp_path):
    state = torch.load(files["options"]["hpsv2"]["path"], weights_only=True)
    state["state_dict"].pop("visual.proj")
    torch.save(state, tmp_path / "HPS_v2_compressed.pt")
    with pytest.raises(CheckpointError, match="does not fit open_clip"):
        get_registry().build("rewards", "hpsv2", {"path": str(tmp_path), "architecture": T.TINY_OPEN_CLIP})


# bfloat16 keeps ~3 significant digits; PickScore's scale is logit_scale = 100 times a cosine
@pytest.mark.parametrize("name,atol", [("imagereward", 0.05), ("hpsv2", 0.01), ("pickscore", 1.0)])
def test_bfloat16_close_to_float32(files, rewards, name, atol):
    half = get_registry().build("rewards", name, {**files["options"][name], "dtype": "bfloat16"})
    assert half.dtype == torch.bfloat16 and next(half.parameters()).dtype == torch.bfloat16
    images = torch.rand(2, 3, 30, 30, requires_grad=True)
    got = half(images, PROMPTS)
    got.sum().backward()
    assert got.dtype == torch.float32 and images.grad.dtype == torch.float32
    with torch.no_grad():
        ref = rewards[name](images, PROMPTS)
    torch.testing.assert_close(got.detach(), ref, rtol=0, atol=atol)


#: each reward's scale: the size of its scores' range (PickScore: logit_scale.exp() = 100 times a cosine;
#: HPS: a cosine; ImageReward: standardised scores, about -2...2)
SCORE_SCALE = {"pickscore": 100.0, "hpsv2": 1.0, "imagereward": 4.0}
EIGHT_PROMPTS = [f"a {c} {o}" for c in ("red", "blue") for o in ("cat", "dog", "car", "house")]


@pytest.mark.parametrize("name", sorted(SCORE_SCALE))
def test_bfloat16_scores_within_0_2_percent_of_scale(files, rewards, name):
    """A ``dtype: bfloat16`` reward scores the same images as its float32 self within 0.2 % of the score's
    scale on average (max 0.5 %: the tiny random networks' bf16 matmuls, not a bias). The scalars that set
    the scale (PickScore's logit_scale = ln 100, ImageReward's head and mean/std, every normalisation and
    cosine) are float32, so a bf16 reward has no systematic offset."""
    half = get_registry().build("rewards", name, {**files["options"][name], "dtype": "bfloat16"})
    images = torch.rand(8, 3, 30, 30)
    prompts = EIGHT_PROMPTS
    with torch.no_grad():
        got, ref = half(images, prompts), rewards[name](images, prompts)
    diff = (got - ref) / SCORE_SCALE[name]
    assert diff.abs().mean() <= 0.002, (name, diff.tolist())
    assert diff.abs().max() <= 0.005, (name, diff.tolist())
    if name == "pickscore":  # the scale is exp(ln 100) = 100, not exp(bf16(ln 100)) = 98.86 (every score -1.14 %)
        assert half.logit_scale == pytest.approx(100.0, rel=1e-6)
        assert half.model.logit_scale.dtype == torch.bfloat16
    if name == "imagereward":
        assert {p.dtype for p in half.mlp.parameters()} == {torch.float32}
        assert half.dtype == torch.bfloat16


@pytest.mark.parametrize("name", sorted(SCORE_SCALE))
def test_float32_reward_under_bf16_autocast_keeps_its_scale(files, rewards, name):
    """A float32 reward called inside a bf16 training step (autocast): same bounds as a bf16 reward."""
    images = torch.rand(8, 3, 30, 30)
    prompts = EIGHT_PROMPTS
    reward = rewards[name]
    with torch.no_grad():
        ref = reward(images, prompts)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = reward(images, prompts)
    diff = (got - ref) / SCORE_SCALE[name]
    assert got.dtype == torch.float32
    assert diff.abs().mean() <= 0.002 and diff.abs().max() <= 0.005, (name, diff.tolist())


def test_prompt_cache_is_keyed_on_autocast_state(rewards, monkeypatch):
    """Text features computed under a training step's bf16 autocast are not reused by a float32
    evaluation of the same prompts: each precision computes (and keeps) its own."""
    reward = rewards["pickscore"]
    calls = []
    original = reward.encode_text
    monkeypatch.setattr(reward, "encode_text", lambda p: calls.append(p) or original(p))
    reward._cache.clear()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reward(images, PROMPTS)
        assert len(calls) == 1
        fp32 = reward(images, PROMPTS)
        assert len(calls) == 2, "fp32 evaluation reused features computed under bf16 autocast"
        reward._cache.clear()
        calls.clear()
        assert torch.equal(reward(images, PROMPTS), fp32)  # the fp32 features, as if computed first
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reward(images, PROMPTS)
            reward(images, PROMPTS)
    assert len(calls) == 2


# ----------------------------------------------------------------------------- PickScore


def test_pickscore_matches_official_snippet(files, rewards, photos):
    """The README's calc_probs scores, with the official processor, vs the plugin on the same photos."""
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    processor = AutoProcessor.from_pretrained(str(files["ps_proc"]))
    model = AutoModel.from_pretrained(str(files["ps_model"])).eval()
    reward = rewards["pickscore"]
    prompt = "a temple on a sunny day"
    pil = [Image.fromarray(a) for a in photos]
    with torch.no_grad():
        image_inputs = processor(images=pil, padding=True, truncation=True, max_length=77, return_tensors="pt")
        text_inputs = processor(text=prompt, padding=True, truncation=True, max_length=77, return_tensors="pt")
        image_embs = _features(model.get_image_features(**image_inputs))
        image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
        text_embs = _features(model.get_text_features(**text_inputs))
        text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
        expected = model.logit_scale.exp() * (text_embs @ image_embs.T)[0]

        # same pixels → same score (the network and the score formula)
        image = reward.model.visual_projection(
            reward.model.vision_model(pixel_values=image_inputs["pixel_values"]).pooler_output
        )
        image = image / image.norm(dim=-1, keepdim=True)
        same_pixels = reward.model.logit_scale.exp() * (image * reward.encode_text([prompt] * 2)).sum(-1)
        torch.testing.assert_close(same_pixels, expected, rtol=0, atol=1e-4)

        # end to end from [0, 1] tensors: only the processor's uint8 rounding differs
        got = torch.cat([reward(_tensor(a)[None], [prompt]) for a in photos])
    torch.testing.assert_close(got, expected, rtol=0, atol=0.02)  # measured 0.006 (scores ≈ ±10 here)
    assert math.isclose(reward.model.logit_scale.exp().item(), 100.0, rel_tol=1e-5)


def test_pickscore_one_folder_with_model_and_processor(files, rewards, tmp_path):
    """``{"path": folder}`` alone is enough when the folder also holds the tokenizer and processor config."""
    import shutil

    folder = tmp_path / "PickScore_v1"
    shutil.copytree(files["ps_model"], folder)
    for f in files["ps_proc"].iterdir():
        shutil.copy(f, folder / f.name)
    reward = get_registry().build("rewards", "pickscore", {"path": str(folder)})
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reward(images, PROMPTS), rewards["pickscore"](images, PROMPTS))


# ----------------------------------------------------------------------------- preprocessing vs official


def _stats(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    d = (a - b).abs()
    return d.max().item(), d.mean().item()


# What is left is PIL's rounding to uint8 after each pass; in normalised units one grey level is
# 1 / (255 · 0.26) ≈ 0.015. Measured on these photos: max ≈ 1.1 levels, mean ≈ 0.27 levels.
PIL_MAX, PIL_MEAN = 0.025, 0.006


@pytest.mark.parametrize("shape", [None, (225, 301), (512, 512), (100, 150)])
def test_imagereward_preprocessing_matches_official_pil_pipeline(photos, shape):
    from PIL import Image

    official = _official_imagereward_transform(224)
    pil = Image.fromarray(photos[0])
    if shape is not None:
        pil = pil.resize(shape[::-1], Image.BICUBIC)
    ours = P.resize_crop_normalize(_tensor(np.array(pil))[None], 224, crop_offset="round")
    worst, mean = _stats(ours[0], official(pil))
    assert worst < PIL_MAX and mean < PIL_MEAN, (worst, mean)


@pytest.mark.parametrize("shape", [None, (225, 301), (1024, 768)])
def test_pickscore_preprocessing_matches_official_processor(photos, shape):
    from PIL import Image

    try:  # transformers 5: the PIL backend is its own class; 4.x: CLIPImageProcessor is the PIL one
        from transformers.models.clip import CLIPImageProcessorPil as Processor
    except ImportError:
        from transformers import CLIPImageProcessor as Processor
    processor = Processor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})  # LAION config
    pil = Image.fromarray(photos[1])
    if shape is not None:
        pil = pil.resize(shape[::-1], Image.BICUBIC)
    official = torch.as_tensor(np.array(processor(images=[pil], return_tensors="np")["pixel_values"]))
    ours = P.resize_crop_normalize(_tensor(np.array(pil))[None], 224, crop_offset="floor")
    worst, mean = _stats(ours, official)
    assert worst < PIL_MAX and mean < PIL_MEAN, (worst, mean)


def test_crop_offset_conventions_differ_where_they_should():
    """(301 − 224) / 2 = 38.5: torchvision rounds to 38 (half to even), transformers floors to 38;
    (335 − 224) / 2 = 55.5: torchvision → 56, transformers → 55 — the china photo at 224 px."""
    x = torch.arange(335.0).reshape(1, 1, 1, 335).expand(1, 3, 224, 335)
    assert P.center_crop(x, 224, "round")[0, 0, 0, 0] == 56
    assert P.center_crop(x, 224, "floor")[0, 0, 0, 0] == 55
    assert P.shortest_edge_size(427, 640, 224) == (224, 335)


@pytest.mark.parametrize("hw", [(427, 640), (640, 427), (300, 300), (223, 90)])
def test_hps_preprocessing_matches_official_tensor_pipeline(photos, hw):
    from PIL import Image

    arr = np.array(Image.fromarray(photos[0]).resize(hw[::-1], Image.BICUBIC))
    ours = P.resize_longest_pad_normalize(_tensor(arr)[None], 224)
    torch.testing.assert_close(ours[0], _official_hps_pixels(arr, 224), rtol=0, atol=1e-5)


def test_preprocessing_is_differentiable():
    x = torch.rand(1, 3, 300, 200, requires_grad=True)
    (P.resize_crop_normalize(x, 224, crop_offset="round").sum() + P.resize_longest_pad_normalize(x, 224).sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- missing weights


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline: nothing can be found or fetched."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


@pytest.mark.parametrize(
    "name,options,needles",
    [
        ("imagereward", {}, ["THUDM/ImageReward", "ImageReward.pt", "rewards.0.path=/models/ImageReward.pt"]),
        ("hpsv2", {}, ["xswu/HPSv2", "HPS_v2_compressed.pt", "rewards.0.path="]),
        ("hpsv2.1", {}, ["xswu/HPSv2", "HPS_v2.1_compressed.pt", "rewards.0.path="]),
        ("pickscore", {}, ["yuvalkirstain/PickScore_v1", "rewards.0.path="]),
        ("imagereward", {"path": "/nonexistent/ImageReward.pt"}, ["no file /nonexistent/ImageReward.pt", "THUDM/ImageReward"]),
    ],
)
def test_missing_weights_name_what_to_download(empty_hub, name, options, needles):
    with pytest.raises(WeightsNotFoundError) as info:
        get_registry().build("rewards", name, options)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)


def test_missing_tokenizer_and_processor_name_their_option(empty_hub, files):
    with pytest.raises(WeightsNotFoundError, match=r"bert-base-uncased.*rewards\.0\.tokenizer="):
        get_registry().build("rewards", "imagereward", {"path": files["options"]["imagereward"]["path"]})
    with pytest.raises(WeightsNotFoundError) as info:
        get_registry().build("rewards", "pickscore", {"path": files["options"]["pickscore"]["path"]})
    message = str(info.value)
    assert "laion/CLIP-ViT-H-14-laion2B-s32B-b79K" in message and "rewards.0.processor=" in message
    assert '--include "*.json"' in message  # only the small tokenizer/config files, not 4 GB of CLIP


def test_network_failure_is_a_clear_error(tmp_path, monkeypatch):
    """Online but unreachable: the download error becomes WeightsNotFoundError, nothing hangs."""
    import huggingface_hub

    calls = []

    def fake_download(repo_id, filename, local_files_only=False, **kw):
        calls.append(local_files_only)
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        raise ConnectionError("Connection refused")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(W, "hub_offline", lambda: False)
    with pytest.raises(WeightsNotFoundError, match="could not download xswu/HPSv2/HPS_v2_compressed.pt"):
        W.resolve_file(None, W.WeightsHint("HPSv2", "xswu/HPSv2", "HPS_v2_compressed.pt", "path", "/m/x.pt"))
    assert calls == [True, False]  # the cache is always tried first


def test_pickled_code_is_refused(tmp_path):
    """weights_only=True: a checkpoint that would run code on load is a CheckpointError."""
    torch.save({"state_dict": {}, "extra": _Unsafe()}, tmp_path / "HPS_v2_compressed.pt")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        W.load_state_dict(tmp_path / "HPS_v2_compressed.pt")


class _Unsafe:
    pass
