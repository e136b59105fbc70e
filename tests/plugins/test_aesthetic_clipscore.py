"""The ``aesthetic`` reward (LAION aesthetic predictor v2) and ``clipscore`` (reward and metric) on tiny
random CLIPs of the real transformers class, saved and loaded back through the plugins' own loading code.

The aesthetic score is compared with the official formula computed independently (``CLIPModel.
get_image_features`` → L2 normalisation → the official ``MLP(768)``, on the CLIP processor's pixels and on
OpenAI CLIP's PIL transform); CLIPScore with ``torchmetrics.multimodal.CLIPScore`` on the same CLIP.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rats_core.errors import CheckpointError, ConfigError, WeightsNotFoundError
from rats_core.registry.plugins import get_registry
from rats_plugins.rewards import _preprocess as P

_spec = importlib.util.spec_from_file_location("tiny_rewards", Path(__file__).with_name("tiny_rewards.py"))
T = importlib.util.module_from_spec(_spec)
sys.modules["tiny_rewards"] = T
_spec.loader.exec_module(T)

PROMPTS = ["a photo of a red cat", "a small blue car", "the big green tree", "a dog in a house"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip_rewards")
    pth, clip_dir, mlp = T.build_aesthetic(root / "aesthetic")
    # seed 0: this random CLIP's cosines with PROMPTS are positive (where one is negative, CLIPScore is 0
    # and has no gradient)
    return {"pth": pth, "aesthetic_clip": clip_dir, "mlp": mlp, "clip": T.build_clip(root / "clipscore")}


@pytest.fixture(scope="module")
def aesthetic(files):
    return get_registry().build("rewards", "aesthetic", {"path": str(files["pth"]), "clip": str(files["aesthetic_clip"])})


@pytest.fixture(scope="module")
def clipscore(files):
    return get_registry().build("rewards", "clipscore", {"path": str(files["clip"])})


@pytest.fixture(scope="module")
def photos():
    from sklearn.datasets import load_sample_image

    return [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]


def _tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1).float() / 255.0


def _features(out):
    """transformers 4.x returns a tensor from get_*_features, 5.x an output object."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _grey_levels(*shape: int) -> torch.Tensor:
    """Random images whose pixels are whole grey levels k/255: the processor's uint8 path sees them exactly."""
    return torch.randint(0, 256, shape).float() / 255.0


# ----------------------------------------------------------------------------- registration and contract


def test_registered_with_documented_options():
    registry = get_registry()
    expected = {
        ("rewards", "aesthetic"): {"path", "clip", "dtype"},
        ("rewards", "clipscore"): {"path", "processor", "w", "prefix", "dtype"},
        ("metrics", "clipscore"): {"path", "processor", "w", "prefix", "dtype", "batch_size", "device"},
    }
    for (kind, name), options in expected.items():
        component = registry.get(kind, name)
        assert set(component.options_schema()["properties"]) == options, (kind, name)
        assert component.doc and component.plugin == "rats_plugins.rewards.plugin"
        assert all(o.description for o in component.describe_options()), (kind, name)
    schema = registry.get("rewards", "clipscore").options_schema()["properties"]
    assert schema["w"]["default"] == 100.0
    with pytest.raises(ConfigError, match="w"):
        registry.get("rewards", "clipscore").validate_options({"w": 0}, "rewards.0")


def test_the_light_factories_build_the_heavy_classes(aesthetic, clipscore):
    from rats_plugins.rewards import aesthetic as aesthetic_module
    from rats_plugins.rewards import clipscore as clipscore_module

    assert type(aesthetic) is aesthetic_module.Aesthetic and type(clipscore) is clipscore_module.ClipScore
    assert get_registry().get("metrics", "clipscore").factory.__module__ == "rats_plugins.rewards.plugin"


@pytest.mark.parametrize("name", ["aesthetic", "clipscore"])
def test_contract_shape_gradient_frozen_deterministic(aesthetic, clipscore, name):
    reward = {"aesthetic": aesthetic, "clipscore": clipscore}[name]
    images = torch.rand(4, 3, 40, 56, requires_grad=True)
    scores = reward(images, PROMPTS)
    assert scores.shape == (4,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0, "gradient must reach the images"
    assert not any(p.requires_grad for p in reward.parameters())
    reward.train()
    assert not reward.training and not any(m.training for m in reward.modules())
    with torch.no_grad():
        torch.testing.assert_close(reward(images.detach(), PROMPTS), scores.detach(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="prompts"):
        reward(torch.rand(2, 3, 32, 32), ["one prompt"])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        reward(torch.rand(3, 32, 32), ["x"])


# ----------------------------------------------------------------------------- aesthetic


def _official_aesthetic(clip_dir: Path, mlp, pixels: torch.Tensor) -> torch.Tensor:
    """simple_inference.py: encode_image → normalized() (numpy L2, zero norms left alone) → MLP."""
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(str(clip_dir)).eval()
    with torch.no_grad():
        emb = _features(model.get_image_features(pixel_values=pixels)).numpy()
        l2 = np.atleast_1d(np.linalg.norm(emb, 2, -1))
        l2[l2 == 0] = 1
        return mlp(torch.from_numpy(emb / l2[:, None]).float()).squeeze(-1)


def test_aesthetic_equals_the_official_formula_on_the_processors_pixels(files, aesthetic):
    """The CLIP processor's pixels → get_image_features → normalise → official MLP == the plugin."""
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor.from_pretrained(str(files["aesthetic_clip"]))
    images = _grey_levels(4, 3, 28, 28)
    pixels = processor(images=[(im * 255).to(torch.uint8) for im in images], return_tensors="pt")["pixel_values"]
    expected = _official_aesthetic(files["aesthetic_clip"], files["mlp"], pixels)
    with torch.no_grad():
        got = aesthetic(images, PROMPTS)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert expected.max() - expected.min() > 0.1  # the comparison is not trivially flat


def test_aesthetic_equals_the_official_predictor_on_photos(files, aesthetic, photos):
    """OpenAI CLIP's preprocess on the PIL photo (Resize bicubic → CenterCrop → Normalize) → the official
    formula, vs the plugin on the photo as a [0, 1] tensor: only PIL's uint8 rounding differs."""
    from PIL import Image
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    size = aesthetic.image_size
    transform = Compose([Resize(size, interpolation=InterpolationMode.BICUBIC), CenterCrop(size),
                         lambda im: im.convert("RGB"), ToTensor(), Normalize(P.CLIP_MEAN, P.CLIP_STD)])
    pixels = torch.stack([transform(Image.fromarray(a)) for a in photos])
    expected = _official_aesthetic(files["aesthetic_clip"], files["mlp"], pixels)
    with torch.no_grad():
        got = torch.cat([aesthetic(_tensor(a)[None], ["unused"]) for a in photos])
    torch.testing.assert_close(got, expected, rtol=0, atol=0.02)  # measured 0.003


def test_aesthetic_ignores_the_prompt_and_keeps_its_head_in_float32(files, aesthetic):
    images = torch.rand(2, 3, 30, 30)
    with torch.no_grad():
        torch.testing.assert_close(aesthetic(images, ["a", "b"]), aesthetic(images, ["c", "d"]), rtol=0, atol=0)
    half = get_registry().build("rewards", "aesthetic", {"path": str(files["pth"]), "clip": str(files["aesthetic_clip"]),
                                                         "dtype": "bfloat16"})
    assert half.dtype == torch.bfloat16 and {p.dtype for p in half.head.parameters()} == {torch.float32}
    with torch.no_grad():
        diff = half(images, ["a", "b"]) - aesthetic(images, ["a", "b"])
    assert diff.abs().max() < 0.05, diff  # on a 1-10 scale


def test_aesthetic_keeps_only_the_vision_tower(aesthetic):
    assert not any(name.startswith(("text", "model.text")) for name, _ in aesthetic.named_parameters())


def test_aesthetic_rejects_other_predictors_and_clips(files, tmp_path):
    from torch import nn

    relu = nn.Sequential(nn.Linear(768, 1024), nn.ReLU(), nn.Dropout(0.2), nn.Linear(1024, 128), nn.ReLU(),
                         nn.Dropout(0.2), nn.Linear(128, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 16),
                         nn.ReLU(), nn.Linear(16, 1))
    torch.save({f"layers.{k}": v for k, v in relu.state_dict().items()}, tmp_path / "ava+logos-l14-reluMSE.pth")
    with pytest.raises(CheckpointError, match="ReLU variants"):
        get_registry().build("rewards", "aesthetic", {"path": str(tmp_path / "ava+logos-l14-reluMSE.pth"),
                                                      "clip": str(files["aesthetic_clip"])})
    # a CLIP whose embeddings are not 768-d (CLIPScore's tiny one: 32-d)
    with pytest.raises(CheckpointError, match="32-d image embeddings"):
        get_registry().build("rewards", "aesthetic", {"path": str(files["pth"]), "clip": str(files["clip"])})


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline: nothing can be found or fetched."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


@pytest.mark.parametrize(
    "kind,name,options,needles",
    [
        ("rewards", "aesthetic", {}, [
            "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth",
            "`path` option is not set", "rewards.0.path=/models/sac+logos+ava1-l14-linearMSE.pth"]),
        ("rewards", "aesthetic", {"path": "/nonexistent/x.pth"}, ["no file /nonexistent/x.pth", "github.com"]),
        ("rewards", "clipscore", {}, ["openai/clip-vit-large-patch14", "rewards.0.path=", "model.safetensors"]),
        ("metrics", "clipscore", {}, ["openai/clip-vit-large-patch14"]),
    ],
)
def test_missing_weights_say_what_to_download(empty_hub, kind, name, options, needles):
    with pytest.raises(WeightsNotFoundError) as info:
        get_registry().build(kind, name, options)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)


def test_aesthetic_missing_clip_names_its_option(empty_hub, files):
    with pytest.raises(WeightsNotFoundError, match=r"openai/clip-vit-large-patch14.*rewards\.0\.clip="):
        get_registry().build("rewards", "aesthetic", {"path": str(files["pth"])})


# ----------------------------------------------------------------------------- clipscore vs torchmetrics


def _torchmetrics_clip(folder: Path):
    """torchmetrics' ``model_name_or_path`` callable. torchmetrics 1.9 expects ``get_*_features`` to return
    tensors; transformers 5 returns output objects, so the model is a CLIPModel whose feature methods do."""
    from transformers import CLIPModel, CLIPProcessor

    class FeatureCLIP(CLIPModel):
        def get_image_features(self, *args, **kwargs):
            return _features(super().get_image_features(*args, **kwargs))

        def get_text_features(self, *args, **kwargs):
            return _features(super().get_text_features(*args, **kwargs))

    return lambda: (FeatureCLIP.from_pretrained(str(folder)).eval(), CLIPProcessor.from_pretrained(str(folder)))


def _torchmetrics_per_image(folder: Path, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """CLIPScore of each (image, prompt) on its own: torchmetrics' max(100·cos, 0) of one pair."""
    from torchmetrics.multimodal import CLIPScore

    metric = CLIPScore(model_name_or_path=_torchmetrics_clip(folder))
    out = []
    for image, prompt in zip(images, prompts):
        metric.reset()
        metric.update((image * 255).round().to(torch.uint8)[None], [prompt])
        out.append(metric.compute())
    return torch.stack(out).float()


@pytest.mark.parametrize("shape,atol", [((28, 28), 1e-4), ((50, 70), 0.2)])
def test_clipscore_equals_torchmetrics(files, clipscore, shape, atol):
    """Same CLIP, same images (uint8 for torchmetrics, /255 for the plugin) and prompts. At the model's
    size the pixels are identical; resized, torchmetrics' processor rounds to uint8 after resizing (on
    noise, the worst case for bicubic overshoot, measured ≤ 0.13 of 100)."""
    images = _grey_levels(4, 3, *shape)
    expected = _torchmetrics_per_image(files["clip"], images, PROMPTS)
    with torch.no_grad():
        got = clipscore(images, PROMPTS)
    torch.testing.assert_close(got, expected, rtol=0, atol=atol)
    assert expected.max() - expected.min() > 1.0


def test_clipscore_equals_torchmetrics_on_photos(files, clipscore, photos):
    """Real photos, resized from 427×640: measured 0.008 apart; the flower's cosine with its prompt is
    negative in this tiny CLIP, and both clamp it to 0."""
    images = torch.stack([_tensor(a) for a in photos])
    prompts = ["a temple", "a flower"]
    expected = _torchmetrics_per_image(files["clip"], images, prompts)
    with torch.no_grad():
        got = clipscore(images, prompts)
    torch.testing.assert_close(got, expected, rtol=0, atol=0.03)
    assert expected[0] > 1.0 and expected[1] == 0.0


def test_clipscore_scale_prefix_and_clamp(files, clipscore, monkeypatch):
    images = _grey_levels(4, 3, 28, 28)
    paper = get_registry().build("rewards", "clipscore", {"path": str(files["clip"]), "w": 2.5, "prefix": "A photo depicts "})
    with torch.no_grad():
        cos = clipscore.similarity(images, PROMPTS)
        torch.testing.assert_close(clipscore(images, PROMPTS), 100 * cos.clamp(min=0), rtol=0, atol=1e-5)
        prefixed = _torchmetrics_per_image(files["clip"], images, [f"A photo depicts {p}" for p in PROMPTS])
        torch.testing.assert_close(paper(images, PROMPTS), 0.025 * prefixed, rtol=0, atol=1e-5)
    # a negative cosine scores 0 (the definition's max), whatever w
    monkeypatch.setattr(clipscore, "similarity", lambda im, p: torch.tensor([-0.3, 0.2]))
    assert clipscore(torch.rand(2, 3, 28, 28), PROMPTS[:2]).tolist() == pytest.approx([0.0, 20.0])


def test_clipscore_metric_is_the_mean_and_equals_torchmetrics_on_the_batch(files):
    """The metric over 8 images in batches of 3 == torchmetrics' CLIPScore over the 8 at once (every
    cosine is positive here, where the paper's and torchmetrics' clamping agree)."""
    from torchmetrics.multimodal import CLIPScore

    metric = get_registry().build("metrics", "clipscore", {"path": str(files["clip"]), "batch_size": 3, "device": "cpu"})
    images, prompts = _grey_levels(8, 3, 28, 28), PROMPTS * 2
    per_image = metric.per_image(images, prompts)
    assert per_image.min() > 0
    reference = CLIPScore(model_name_or_path=_torchmetrics_clip(files["clip"]))
    reference.update((images * 255).round().to(torch.uint8), prompts)
    out = metric(images, prompts)
    assert set(out) == {"clipscore"} and isinstance(out["clipscore"], float)
    assert out["clipscore"] == pytest.approx(reference.compute().item(), abs=1e-4)
    assert out["clipscore"] == pytest.approx(per_image.mean().item(), abs=1e-6)
