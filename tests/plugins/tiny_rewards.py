"""Tiny random reward models in the *official* checkpoint layouts, built offline, and reference scorers.

* ImageReward: :class:`OfficialImageReward` re-implements the official network from THUDM/ImageReward
  (``models/BLIP/vit.py``, ``models/BLIP/med.py``, ``ImageReward.py``) with the official module
  names, so its ``state_dict()`` is an ``ImageReward.pt`` and its ``score`` is the official score —
  plain torch, independent of the transformers classes the plugin uses.
* HPSv2: an open_clip model of a tiny registered architecture, saved as ``{"state_dict": ...}`` like
  ``HPS_v2_compressed.pt``.
* PickScore: a tiny transformers ``CLIPModel`` folder plus a processor folder (CLIP tokenizer and
  ``CLIPImageProcessor`` config), like ``yuvalkirstain/PickScore_v1`` and the LAION processor.
* CLIPScore: the same in one folder, like ``openai/clip-vit-large-patch14``.
* Aesthetic predictor: such a CLIP with 768-d embeddings and :class:`OfficialAestheticMLP` saved as
  ``sac+logos+ava1-l14-linearMSE.pth`` (the official ``MLP(768)``'s layers and state-dict keys).

Tokenizers are made without downloads: BERT from a small WordPiece vocabulary written here, CLIP's
BPE from the vocabulary open_clip bundles (all of it, so open_clip's and transformers' tokenizers agree).
"""

from __future__ import annotations

import gzip
import json
import math
from functools import lru_cache
from pathlib import Path

import rats_core  # noqa: F401  (CPU torchvision guard before transformers/open_clip)
import torch
from torch import Tensor, nn

# ----------------------------------------------------------------------------- tokenizers

_WORDS = "a an the of in on with and photo painting cat dog red blue green car tree house small big".split()
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")


def write_bert_vocab(directory: Path) -> Path:
    """A WordPiece vocabulary (``vocab.txt``): BERT's special tokens, some words, letters, ``##`` pieces."""
    directory.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [c for c in _CHARS] + [w for w in _WORDS if w not in _CHARS] + ["##" + c for c in _CHARS]
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return directory


def bert_vocab_size(directory: Path) -> int:
    return len((directory / "vocab.txt").read_text().split())


@lru_cache(maxsize=1)
def _clip_bpe() -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary and merges rebuilt from open_clip's bundled BPE file (as its SimpleTokenizer does)."""
    import open_clip.tokenizer as oct

    merges = gzip.open(oct.default_bpe(), "rt", encoding="utf-8").read().split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(oct.bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, merges


def write_clip_tokenizer(directory: Path) -> Path:
    """A full CLIP BPE tokenizer folder (``vocab.json``, ``merges.txt``) loadable by ``CLIPTokenizer``."""
    from transformers import CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = _clip_bpe()
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), pad_token="<|endoftext|>")
    tok.model_max_length = 77
    tok.save_pretrained(str(directory))
    return directory


# ----------------------------------------------------------------------------- ImageReward, official layout

IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072


class _Mlp(nn.Module):  # vit.Mlp
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _Attention(nn.Module):  # vit.Attention: fused qkv, reshape(B, N, 3, heads, C // heads)
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, dim * 3, bias=True), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class _Block(nn.Module):  # vit.Block (pre-norm, LayerNorm eps 1e-6)
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), _Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), _Mlp(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):  # timm PatchEmbed
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class _VisionTransformer(nn.Module):  # vit.VisionTransformer
    def __init__(self, image_size: int, patch: int, dim: int, depth: int, heads: int):
        super().__init__()
        self.patch_embed = _PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (image_size // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.ModuleList([_Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed[:, : x.shape[1] + 1]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class _BertSelfAttention(nn.Module):  # med.BertSelfAttention (keys/values from encoder_width if cross)
    def __init__(self, hidden: int, heads: int, kv_width: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key, self.value = nn.Linear(kv_width, hidden), nn.Linear(kv_width, hidden)

    def _split(self, x):
        return x.view(*x.shape[:-1], self.heads, -1).permute(0, 2, 1, 3)

    def forward(self, h, mask=None, enc=None):
        kv = h if enc is None else enc
        q, k, v = self._split(self.query(h)), self._split(self.key(kv)), self._split(self.value(kv))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores + mask
        out = scores.softmax(-1) @ v
        return out.permute(0, 2, 1, 3).reshape(*h.shape[:-1], -1)


class _DenseNorm(nn.Module):  # med.BertSelfOutput / BertOutput: dense → +residual → LayerNorm
    def __init__(self, a: int, b: int):
        super().__init__()
        self.dense, self.LayerNorm = nn.Linear(a, b), nn.LayerNorm(b, eps=1e-12)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class _BertAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_width: int):
        super().__init__()
        self.self, self.output = _BertSelfAttention(hidden, heads, kv_width), _DenseNorm(hidden, hidden)

    def forward(self, h, mask=None, enc=None):
        return self.output(self.self(h, mask, enc), h)


class _Dense(nn.Module):
    def __init__(self, a: int, b: int):
        super().__init__()
        self.dense = nn.Linear(a, b)

    def forward(self, x):
        return nn.functional.gelu(self.dense(x))


class _BertLayer(nn.Module):  # med.BertLayer, mode="multimodal"
    def __init__(self, hidden: int, heads: int, intermediate: int, encoder_width: int):
        super().__init__()
        self.attention = _BertAttention(hidden, heads, hidden)
        self.crossattention = _BertAttention(hidden, heads, encoder_width)
        self.intermediate, self.output = _Dense(hidden, intermediate), _DenseNorm(intermediate, hidden)

    def forward(self, h, mask, enc):
        h = self.attention(h, mask)
        h = self.crossattention(h, None, enc)
        return self.output(self.intermediate(h), h)


class _BertEmbeddings(nn.Module):  # med.BertEmbeddings: word + absolute position, no token types
    def __init__(self, vocab: int, hidden: int, max_pos: int):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden, padding_idx=0)
        self.position_embeddings = nn.Embedding(max_pos, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)
        # transformers 4.15 saved position_ids with the weights, so the official file has this key
        self.register_buffer("position_ids", torch.arange(max_pos).expand((1, -1)))

    def forward(self, ids):
        return self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(self.position_ids[:, : ids.shape[1]]))


class _BertEncoder(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layer = nn.ModuleList(layers)


class _BertModel(nn.Module):  # med.BertModel(add_pooling_layer=False), encoder (non-causal) mode
    def __init__(self, vocab, hidden, heads, layers, intermediate, max_pos, encoder_width):
        super().__init__()
        self.embeddings = _BertEmbeddings(vocab, hidden, max_pos)
        self.encoder = _BertEncoder([_BertLayer(hidden, heads, intermediate, encoder_width) for _ in range(layers)])

    def forward(self, ids, attention_mask, enc):
        mask = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0  # transformers 4.15's extended mask
        h = self.embeddings(ids)
        for layer in self.encoder.layer:
            h = layer(h, mask, enc)
        return h


class _Blip(nn.Module):  # BLIP_Pretrain as ImageReward builds it
    def __init__(self, vision: dict, text: dict, embed_dim: int = 16):
        super().__init__()
        self.visual_encoder = _VisionTransformer(**vision)
        self.text_encoder = _BertModel(encoder_width=vision["dim"], **text)
        self.vision_proj = nn.Linear(vision["dim"], embed_dim)  # unused by ImageReward, present in the file
        self.text_proj = nn.Linear(text["hidden"], embed_dim)


class OfficialImageReward(nn.Module):
    """The official ImageReward network with the official names; ``state_dict()`` is an ImageReward.pt."""

    def __init__(self, vision: dict, text: dict):
        super().__init__()
        self.blip = _Blip(vision, text)
        hidden = text["hidden"]
        self.mlp = nn.Module()
        self.mlp.layers = nn.Sequential(
            nn.Linear(hidden, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def score(self, input_ids: Tensor, attention_mask: Tensor, pixels: Tensor) -> Tensor:
        """``ImageReward.score_gard``: preprocessed pixels and tokenizer output in, ``[B]`` out."""
        image_embeds = self.blip.visual_encoder(pixels)
        text = self.blip.text_encoder(input_ids, attention_mask, image_embeds)[:, 0, :]
        return ((self.mlp.layers(text) - IMAGEREWARD_MEAN) / IMAGEREWARD_STD).squeeze(-1)


#: tiny but structurally complete: several heads (qkv layout matters), text ≠ image width
TINY_IR_VISION = dict(image_size=32, patch=16, dim=192, depth=2, heads=3)


def tiny_ir_text(vocab: int) -> dict:
    return dict(vocab=vocab, hidden=128, heads=2, layers=2, intermediate=256, max_pos=40)


def build_imagereward(directory: Path, seed: int = 0) -> tuple[Path, Path, OfficialImageReward]:
    """Write ``ImageReward.pt`` (official layout) and a BERT tokenizer folder; return both paths and the
    reference model. The MLP is re-initialised with a larger scale than the official init so that the
    tiny model's scores actually vary with the image."""
    tok_dir = write_bert_vocab(directory / "bert")
    torch.manual_seed(seed)
    model = OfficialImageReward(TINY_IR_VISION, tiny_ir_text(bert_vocab_size(tok_dir) + 2)).eval()
    for layer in model.mlp.layers:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=1.0 / math.sqrt(layer.in_features))
            nn.init.normal_(layer.bias, std=0.1)
    ckpt = directory / "ImageReward.pt"
    torch.save(model.state_dict(), ckpt)
    return ckpt, tok_dir, model


def official_bert_tokenizer(tok_dir: Path):
    """``BLIP.init_tokenizer`` on a local vocabulary."""
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(str(tok_dir))
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


# ----------------------------------------------------------------------------- HPSv2 (open_clip)

TINY_OPEN_CLIP = "rats-tiny-ViT-14"
_TINY_OPEN_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 28, "layers": 2, "width": 64, "head_width": 32, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def register_tiny_open_clip(directory: Path) -> str:
    """Register a ViT-H-14-shaped but tiny open_clip architecture (idempotent); return its name."""
    import open_clip

    if TINY_OPEN_CLIP not in open_clip.list_models():
        directory.mkdir(parents=True, exist_ok=True)
        cfg = directory / f"{TINY_OPEN_CLIP}.json"
        cfg.write_text(json.dumps(_TINY_OPEN_CLIP_CFG))
        open_clip.add_model_config(cfg)
    return TINY_OPEN_CLIP


def build_hps(directory: Path, filename: str = "HPS_v2_compressed.pt", seed: int = 0):
    """Write an HPS-style checkpoint ``{"state_dict": ...}`` of the tiny architecture; return (path, model)."""
    import open_clip

    directory.mkdir(parents=True, exist_ok=True)
    name = register_tiny_open_clip(directory / "open_clip_configs")
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None, output_dict=True).eval()  # as hpsv2 creates it
    with torch.no_grad():  # a realistic CLIP temperature
        model.logit_scale.fill_(math.log(100.0))
    path = directory / filename
    torch.save({"epoch": 1, "state_dict": model.state_dict()}, path)
    return path, model


# ----------------------------------------------------------------------------- PickScore (transformers CLIP)


def build_pickscore(directory: Path, seed: int = 0, image_size: int = 28, projection_dim: int = 32) -> tuple[Path, Path]:
    """A tiny ``CLIPModel`` folder and a processor folder (tokenizer + ``CLIPImageProcessor`` config)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=14, hidden_act="gelu"),
        projection_dim=projection_dim,
        logit_scale_init_value=math.log(100.0),
    )
    model = CLIPModel(config).eval()
    model_dir = directory / "pickscore"
    model.save_pretrained(str(model_dir))
    proc_dir = write_clip_tokenizer(directory / "processor")
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    CLIPProcessor(image_processor, CLIPTokenizer.from_pretrained(str(proc_dir))).save_pretrained(str(proc_dir))
    image_processor.save_pretrained(str(proc_dir))  # preprocessor_config.json, as in the LAION repo
    return model_dir, proc_dir


# ----------------------------------------------------------------------------- CLIPScore, aesthetic predictor


def build_clip(directory: Path, seed: int = 0, image_size: int = 28, projection_dim: int = 32) -> Path:
    """One folder with a tiny ``CLIPModel``, its tokenizer and ``preprocessor_config.json`` (the layout of
    ``openai/clip-vit-large-patch14``)."""
    import shutil

    model_dir, proc_dir = build_pickscore(directory, seed=seed, image_size=image_size, projection_dim=projection_dim)
    for f in proc_dir.iterdir():
        shutil.copy(f, model_dir / f.name)
    return model_dir


class OfficialAestheticMLP(nn.Module):
    """``MLP(768)`` of improved-aesthetic-predictor's ``simple_inference.py``: Linear/Dropout, no activation."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, x):
        return self.layers(x)


AESTHETIC_FILENAME = "sac+logos+ava1-l14-linearMSE.pth"


def build_aesthetic(directory: Path, seed: int = 0) -> tuple[Path, Path, OfficialAestheticMLP]:
    """A tiny CLIP folder with the official 768-d embeddings and ``sac+logos+ava1-l14-linearMSE.pth`` of the
    official shapes; return (pth, CLIP folder, the MLP). The MLP's init is widened so that the tiny model's
    scores vary with the image."""
    clip_dir = build_clip(directory / "clip", seed=seed, projection_dim=768)
    torch.manual_seed(seed + 1)
    mlp = OfficialAestheticMLP().eval()
    for layer in mlp.layers:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=2.0 / math.sqrt(layer.in_features))
            nn.init.normal_(layer.bias, std=0.1)
    path = directory / AESTHETIC_FILENAME
    torch.save(mlp.state_dict(), path)
    return path, clip_dir, mlp
