"""ImageReward (Xu et al. 2023) as a differentiable reward, scoring like the official ``ImageReward.score``.

The official model (THUDM/ImageReward, ``ImageReward/ImageReward.py``) is BLIP's ViT-L/16 at 224 px,
BLIP's BERT-base text encoder with cross-attention into the image tokens (``models/BLIP/med.py``), and
an MLP head on the text encoder's first token:

    raw   = mlp(text_encoder(tokens, encoder_hidden_states=vit(image)).last_hidden_state[:, 0])
    score = (raw − 0.16717362830052426) / 1.0333394966054072

It is rebuilt here from transformers' own ports of the same two networks — ``BlipVisionModel`` (timm
ViT, fused qkv) and ``BlipTextModel`` (med.py's BERT, whose cross-attention keys/values take the
1024-wide image tokens; transformers' plain ``BertModel`` cannot: its cross-attention is
``hidden_size``-wide and needs ``is_decoder=True``, i.e. causal self-attention) — and the official
checkpoint's keys are mapped onto them (:func:`map_official_state_dict`).

Tokens follow the official scorer exactly: ``bert-base-uncased`` plus BLIP's ``[DEC]`` (bos) and
``[ENC]`` special tokens (vocabulary 30524), ``padding="max_length", truncation=True, max_length=35``.
The official scorer feeds those ids as they are, so the first token stays ``[CLS]``: BLIP's ITM
head swaps in ``[ENC]``, but ImageReward's ``score``/``score_gard`` (and its training code) never do.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

from torch import Tensor, nn

from rats_core.errors import CheckpointError

from ._base import DType, FrozenReward, float32_compute
from ._preprocess import CLIP_MEAN, CLIP_STD, check_images, resize_crop_normalize
from ._weights import from_pretrained, load_state_dict, resolve_file, strip_prefix
from .locate import IMAGEREWARD, IMAGEREWARD_BERT
from .options import IMAGEREWARD_TOKENIZER

REPO_ID = "THUDM/ImageReward"
FILENAME = "ImageReward.pt"
TOKENIZER = IMAGEREWARD_TOKENIZER
#: the official score's standardisation (ImageReward.__init__)
MEAN = 0.16717362830052426
STD = 1.0333394966054072
MAX_LENGTH = 35
#: BLIP's ViT-L and BERT-base both use 64-dim attention heads (1024/16, 768/12)
HEAD_DIM = 64

_WEIGHTS = IMAGEREWARD
_TOKENIZER = IMAGEREWARD_BERT

_VISION = "blip.visual_encoder."
_TEXT = "blip.text_encoder."
_MLP = "mlp.layers."
#: official (timm-style BLIP ViT) name → transformers BlipVisionModel name; qkv stays fused in both,
#: with the same [3, heads, head_dim] output layout, so tensors are copied unchanged.
_VISION_RENAMES = [
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.fc([12])\.", r"encoder.layers.\1.mlp.fc\2."),
    (r"^norm\.", "post_layernorm."),
]
#: the official MLP is Linear/Dropout interleaved: Linear at 0, 2, 4, 6, 7 (dropouts at 1, 3, 5)
_MLP_LINEARS = (0, 2, 4, 6, 7)


def map_official_state_dict(state_dict: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Split an official ``ImageReward.pt`` state dict into ``{"vision", "text", "mlp"}`` state dicts
    keyed for ``BlipVisionModel``, ``BlipTextModel`` and :class:`MLPHead`.

    ``blip.text_encoder.*`` keys already use transformers' names (med.py is a fork of transformers'
    BERT); only the old persistent ``position_ids`` buffer is dropped. BLIP's unused contrastive
    projections (``blip.vision_proj``/``blip.text_proj``) and anything outside the three parts are
    ignored. An unknown key inside a part raises :class:`CheckpointError`.
    """
    out: dict[str, dict[str, Tensor]] = {"vision": {}, "text": {}, "mlp": {}}
    for key, value in state_dict.items():
        if key.startswith(_VISION):
            name = key[len(_VISION) :]
            for pattern, repl in _VISION_RENAMES:
                new, n = re.subn(pattern, repl, name)
                if n:
                    out["vision"][new] = value
                    break
            else:
                raise CheckpointError(f"ImageReward checkpoint: unexpected vision key {key!r}")
        elif key.startswith(_TEXT):
            name = key[len(_TEXT) :]
            if name != "embeddings.position_ids":
                out["text"][name] = value
        elif key.startswith(_MLP):
            out["mlp"][key[len("mlp.") :]] = value
    for part, sd in out.items():
        if not sd:
            raise CheckpointError(
                f"ImageReward checkpoint has no {part} weights (expected keys {_VISION}*, {_TEXT}*, {_MLP}*); "
                "is this the official ImageReward.pt?"
            )
    return out


class MLPHead(nn.Module):
    """The official ``MLP``: five Linear layers, no activation, dropout removed (identity at eval).

    :class:`ImageReward` keeps it in float32 and runs it outside autocast: its output *is* the score,
    and it is a few hundred thousand weights next to BLIP's 400 million."""

    def __init__(self, sizes: Sequence[int]):
        super().__init__()
        layers: list[nn.Module] = [nn.Identity() for _ in range(_MLP_LINEARS[-1] + 1)]
        for i, (a, b) in zip(_MLP_LINEARS, zip(sizes[:-1], sizes[1:])):
            layers[i] = nn.Linear(a, b)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def _layer_count(keys, pattern: str) -> int:
    idx = [int(m.group(1)) for k in keys if (m := re.match(pattern, k))]
    return max(idx) + 1 if idx else 0


def architecture(parts: dict[str, dict[str, Tensor]]):
    """``(BlipVisionConfig, BlipTextConfig, mlp sizes)`` read from the mapped checkpoint's tensor shapes.

    The official file gives ViT-L/16 at 224 px (24 layers, 1024 wide) and BERT-base (12 layers, 768
    wide, vocabulary 30524, cross-attention from 1024); heads are 64 wide in both.
    """
    from transformers import BlipTextConfig, BlipVisionConfig

    v, t, m = parts["vision"], parts["text"], parts["mlp"]
    try:
        width = v["embeddings.class_embedding"].shape[-1]
        patch = v["embeddings.patch_embedding.weight"].shape[-1]
        grid = math.isqrt(v["embeddings.position_embedding"].shape[1] - 1)
        vision_cfg = BlipVisionConfig(
            hidden_size=width,
            intermediate_size=v["encoder.layers.0.mlp.fc1.weight"].shape[0],
            num_hidden_layers=_layer_count(v, r"encoder\.layers\.(\d+)\."),
            num_attention_heads=width // HEAD_DIM,
            image_size=grid * patch,
            patch_size=patch,
            hidden_act="gelu",
            layer_norm_eps=1e-6,  # BLIP's ViT: partial(nn.LayerNorm, eps=1e-6)
            attention_dropout=0.0,
        )
        vocab, hidden = t["embeddings.word_embeddings.weight"].shape
        text_cfg = BlipTextConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            encoder_hidden_size=t["encoder.layer.0.crossattention.self.key.weight"].shape[1],
            intermediate_size=t["encoder.layer.0.intermediate.dense.weight"].shape[0],
            num_hidden_layers=_layer_count(t, r"encoder\.layer\.(\d+)\."),
            num_attention_heads=hidden // HEAD_DIM,
            max_position_embeddings=t["embeddings.position_embeddings.weight"].shape[0],
            hidden_act="gelu",
            layer_norm_eps=1e-12,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            pad_token_id=0,
            bos_token_id=vocab - 2,  # [DEC], the first token BLIP adds after BERT's 30522
            sep_token_id=None,
            is_decoder=True,  # builds the cross-attention layers; forward() runs bidirectionally
        )
        sizes = [m[f"layers.{_MLP_LINEARS[0]}.weight"].shape[1]] + [
            m[f"layers.{i}.weight"].shape[0] for i in _MLP_LINEARS
        ]
    except KeyError as exc:
        raise CheckpointError(f"ImageReward checkpoint is missing {exc.args[0]!r} (after key mapping)") from None
    return vision_cfg, text_cfg, sizes


def _build_networks(parts: dict[str, dict[str, Tensor]]):
    """BlipVisionModel, BlipTextModel and MLPHead sized from the checkpoint and loaded with it."""
    from transformers import BlipTextModel, BlipVisionModel

    vision_cfg, text_cfg, sizes = architecture(parts)
    v, t, m = parts["vision"], parts["text"], parts["mlp"]
    vision = BlipVisionModel(vision_cfg)
    text = BlipTextModel(text_cfg, add_pooling_layer=False)
    mlp = MLPHead(sizes)
    for name, module, sd in (("vision", vision, v), ("text", text, t), ("mlp", mlp, m)):
        missing, unexpected = module.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"ImageReward checkpoint does not fit the {name} network: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
    return vision, text, mlp


def load_tokenizer(path: str):
    """BLIP's ``init_tokenizer``: BERT uncased plus ``[DEC]`` as bos and ``[ENC]`` as an extra special."""
    from transformers import BertTokenizer

    tokenizer = from_pretrained(BertTokenizer.from_pretrained, path, _TOKENIZER)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


class ImageReward(FrozenReward):
    """``ImageReward(images[B,3,H,W] in [0,1], prompts) -> [B]`` on the official scale (≈ −2…2)."""

    float32_modules = ("mlp",)

    def __init__(self, path: str | None = None, tokenizer: str = TOKENIZER, dtype: DType = "float32"):
        super().__init__(dtype)
        checkpoint = resolve_file(path, _WEIGHTS)
        parts = map_official_state_dict(strip_prefix(load_state_dict(checkpoint), "module."))
        self.vision, self.text, self.mlp = _build_networks(parts)
        self.image_size = self.vision.config.image_size
        self.tokenizer = load_tokenizer(tokenizer)
        if len(self.tokenizer) != self.text.config.vocab_size:
            raise CheckpointError(
                f"ImageReward: the tokenizer at {tokenizer!r} has {len(self.tokenizer)} tokens with [DEC]/[ENC], "
                f"the checkpoint {checkpoint} expects {self.text.config.vocab_size} (bert-base-uncased gives 30524)"
            )
        self.freeze()

    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        enc = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
        )
        return enc["input_ids"], enc["attention_mask"]

    def preprocess(self, images: Tensor) -> Tensor:
        """Official ``Resize(224, BICUBIC) → CenterCrop(224) → ToTensor → Normalize(CLIP)``, differentiable."""
        return resize_crop_normalize(images, self.image_size, crop_offset="round", mean=CLIP_MEAN, std=CLIP_STD)

    def forward(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_images(images, prompts, "imagereward")
        device = self.device
        ids, mask = self.cached(prompts, self.tokenize)
        pixels = self.preprocess(images.to(device)).to(self.dtype)
        image_tokens = self.vision(pixel_values=pixels).last_hidden_state
        # encoder_attention_mask=None: every image token is attended, as the official all-ones mask
        text = self.text(
            input_ids=ids.to(device), attention_mask=mask.to(device), encoder_hidden_states=image_tokens
        ).last_hidden_state[:, 0, :]
        with float32_compute(device):  # the head and the standardisation in float32 (see _base.py)
            raw = self.mlp(text.float())
        return self.as_scores((raw - MEAN) / STD)
