"""Tiny randomly initialised diffusers pipelines of the real classes, built offline.

Each ``build_*`` function writes a complete pipeline folder (``save_pretrained``) with a few layers
and tiny dimensions, so the backbone plugins load them exactly as they load the real models:
SD1.5 (eps or v-prediction), SDXL, PixArt-α / PixArt-Σ, FLUX.1 (dev with guidance embedding, or
schnell without), SD3.5 (MMDiT-X with a dual-attention block, three text encoders). Images are 16×16 px; every VAE here downsamples by 2, so latents are 8×8.

Tokenizers are made without any download: CLIP's BPE from the vocabulary open_clip bundles (the
first few hundred merges), T5 as a small Unigram vocabulary.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import rats_core  # noqa: F401  (CPU torchvision guard before diffusers/transformers)
import torch

RESOLUTION = 16
CLIP_MAX_LENGTH = 16
T5_MAX_LENGTH = 12
_WORDS = "a photo of cat dog red blue car tree house the in on with painting small big".split()


# ----------------------------------------------------------------------------- tokenizers


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte → printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_tokenizer(num_merges: int = 400, max_length: int = CLIP_MAX_LENGTH):
    """A real CLIP BPE tokenizer with a truncated merge list (vocabulary ≈ 1000 tokens)."""
    from transformers import CLIPTokenizer

    folder = list(importlib.util.find_spec("open_clip").submodule_search_locations)[0]
    lines = gzip.open(os.path.join(folder, "bpe_simple_vocab_16e6.txt.gz")).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + num_merges]]
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=max_length)


def t5_tokenizer(max_length: int = T5_MAX_LENGTH):
    """A T5 (Unigram) tokenizer over a few words plus single letters."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [("▁" + w, -1.0 - 0.01 * i) for i, w in enumerate(_WORDS)]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


# ----------------------------------------------------------------------------- text encoders, VAE


def clip_text_model(tokenizer, hidden: int = 32, projection: bool = False, projection_dim: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=projection_dim,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def t5_encoder(tokenizer, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


def vae(latent_channels: int = 4, flux: bool = False, sd3: bool = False):
    """A two-level AutoencoderKL (downsamples by 2). ``flux`` / ``sd3``: no quant convs, with that model's
    scaling and shift factors."""
    from diffusers import AutoencoderKL

    kwargs = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[8, 16],
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=RESOLUTION,
    )
    if flux or sd3:
        kwargs.update(scaling_factor=1.5305 if sd3 else 0.3611, shift_factor=0.0609 if sd3 else 0.1159,
                      use_quant_conv=False, use_post_quant_conv=False)
    else:
        kwargs.update(scaling_factor=0.18215)
    return AutoencoderKL(**kwargs).eval()


def _unet(cross_attention_dim: int, sdxl: bool = False, text_projection_dim: int = 32):
    from diffusers import UNet2DConditionModel

    kwargs = dict(
        sample_size=RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    if sdxl:
        kwargs.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=4,
            projection_class_embeddings_input_dim=4 * 6 + text_projection_dim,
            transformer_layers_per_block=1,
            use_linear_projection=True,
        )
    return UNet2DConditionModel(**kwargs).eval()


_SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


# ----------------------------------------------------------------------------- pipelines


def build_sd15(directory: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """SD1.5-shaped pipeline; ``prediction_type="v_prediction"`` for an SD2-style v model."""
    from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionPipeline

    torch.manual_seed(seed)
    tok = clip_tokenizer()
    if prediction_type == "epsilon":  # what the SD1.5 repo ships
        scheduler = PNDMScheduler(**_SD_BETAS, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    else:  # what the SD2 v-model repos ship
        scheduler = DDIMScheduler(**_SD_BETAS, prediction_type=prediction_type, clip_sample=False,
                                  steps_offset=1, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(
        vae=vae(), text_encoder=clip_text_model(tok), tokenizer=tok, unet=_unet(32), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(directory)
    return Path(directory)


def build_sdxl(directory: Path, seed: int = 0) -> Path:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    torch.manual_seed(seed)
    tok = clip_tokenizer()
    tok2 = clip_tokenizer()
    pipe = StableDiffusionXLPipeline(
        vae=vae(),
        text_encoder=clip_text_model(tok, hidden=16),
        text_encoder_2=clip_text_model(tok2, hidden=16, projection=True, projection_dim=32),
        tokenizer=tok,
        tokenizer_2=tok2,
        unet=_unet(32, sdxl=True, text_projection_dim=32),
        scheduler=EulerDiscreteScheduler(**_SD_BETAS, steps_offset=1, timestep_spacing="leading",
                                         interpolation_type="linear"),
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(directory)
    return Path(directory)


def build_pixart(directory: Path, sigma: bool = False, resolution_conditioning: bool = False, seed: int = 0) -> Path:
    """PixArt-α (or -Σ with ``sigma=True``); ``resolution_conditioning`` mimics the 1024 px α model."""
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline, PixArtTransformer2DModel

    torch.manual_seed(seed)
    tok = t5_tokenizer()
    transformer = PixArtTransformer2DModel(
        # 128 is what the 1024 px α model has; the pipeline and the model then use resolution conditioning
        sample_size=128 if resolution_conditioning else RESOLUTION // 2,
        num_layers=2,
        patch_size=2,
        attention_head_dim=12,  # inner dim 24: resolution conditioning splits it in three
        num_attention_heads=2,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,  # learned σ: the second half of the channels is the variance
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    ).eval()
    scheduler = DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                                            num_train_timesteps=1000, prediction_type="epsilon")
    cls = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    pipe = cls(tokenizer=tok, text_encoder=t5_encoder(tok), vae=vae(), transformer=transformer, scheduler=scheduler)
    pipe.save_pretrained(directory)
    return Path(directory)


def build_flux(directory: Path, guidance_embeds: bool = True, seed: int = 0) -> Path:
    """FLUX.1-dev-shaped pipeline (``guidance_embeds=False``: schnell-shaped, static shift 1)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    tok = clip_tokenizer(max_length=77)  # FluxPipeline pads CLIP prompts to 77 tokens
    tok2 = t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels packed 2×2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 4, 8),
    ).eval()
    if guidance_embeds:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                    max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae(flux=True),
        text_encoder=clip_text_model(tok, hidden=32, projection=False),
        tokenizer=tok,
        text_encoder_2=t5_encoder(tok2),
        tokenizer_2=tok2,
        transformer=transformer,
    )
    pipe.save_pretrained(directory)
    return Path(directory)


def build_sd35(directory: Path, seed: int = 0) -> Path:
    """SD3.5-Medium-shaped pipeline: an MMDiT-X (the first block has the second, image-only attention; QK
    RMS-norm), 16 latent channels, CLIP-L and -G of different widths (padded to T5's width, as the real
    768 + 1280 are to 4096), T5, and the static shift-3 flow scheduler the SD3.5 repos ship."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    tok, tok2, tok3 = clip_tokenizer(), clip_tokenizer(), t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=RESOLUTION // 2,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,  # T5's width
        caption_projection_dim=16,  # = heads × head dim
        pooled_projection_dim=32,  # CLIP-L 16 + CLIP-G 16 projections
        pos_embed_max_size=8,  # up to 8 patches a side: 32 px
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    ).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae(latent_channels=16, sd3=True),
        text_encoder=clip_text_model(tok, hidden=8, projection=True, projection_dim=16),
        tokenizer=tok,
        text_encoder_2=clip_text_model(tok2, hidden=16, projection=True, projection_dim=16),
        tokenizer_2=tok2,
        text_encoder_3=t5_encoder(tok3, d_model=32),
        tokenizer_3=tok3,
    )
    pipe.save_pretrained(directory)
    return Path(directory)


BUILDERS = {
    "sd15": build_sd15,
    "sd15-v": lambda d: build_sd15(d, prediction_type="v_prediction"),
    "sdxl": build_sdxl,
    "pixart": build_pixart,
    "pixart-1024": lambda d: build_pixart(d, resolution_conditioning=True),
    "pixart-sigma": lambda d: build_pixart(d, sigma=True),
    "flux": build_flux,
    "flux-schnell": lambda d: build_flux(d, guidance_embeds=False),
    "sd35": build_sd35,
    "sd35-no-t5": build_sd35,  # the same folder, loaded with t5=false
}
