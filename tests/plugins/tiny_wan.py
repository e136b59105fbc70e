"""A tiny randomly initialised ``WanPipeline`` of the real classes, built offline.

``WanTransformer3DModel`` (2 layers, 2 heads of 12 dims), ``AutoencoderKLWan`` (base dim 3, the real
temporal ×4 / spatial ×8 compression), a 2-layer ``UMT5EncoderModel`` with a small Unigram T5 tokenizer,
and the scheduler the Wan2.1 T2V Diffusers repositories ship (``UniPCMultistepScheduler`` with flow
σ's, ``flow_shift=3.0``), saved with ``save_pretrained`` so the ``wan`` backbone loads it exactly as it
loads the real model. Videos are 5 frames of 16×16 px: latents ``[B, 16, 2, 2, 2]``.
"""

from __future__ import annotations

from pathlib import Path

import rats_core  # noqa: F401  (CPU torchvision guard before diffusers/transformers)
import torch

RESOLUTION = 16
NUM_FRAMES = 5
MAX_SEQUENCE_LENGTH = 12
_WORDS = "a photo of cat dog red blue car tree house the in on with painting small big running video".split()

#: the Wan-AI/Wan2.1-T2V-1.3B-Diffusers scheduler config (480p: flow_shift 3.0)
WAN_SCHEDULER = dict(
    beta_end=0.02, beta_schedule="linear", beta_start=0.0001, disable_corrector=[], dynamic_thresholding_ratio=0.995,
    final_sigmas_type="zero", flow_shift=3.0, lower_order_final=True, num_train_timesteps=1000, predict_x0=True,
    prediction_type="flow_prediction", rescale_betas_zero_snr=False, sample_max_value=1.0, solver_order=2,
    solver_p=None, solver_type="bh2", steps_offset=0, thresholding=False, timestep_spacing="linspace",
    trained_betas=None, use_beta_sigmas=False, use_exponential_sigmas=False, use_flow_sigmas=True,
    use_karras_sigmas=False,
)


def t5_tokenizer(max_length: int = MAX_SEQUENCE_LENGTH):
    """A T5 (Unigram) tokenizer over a few words plus single letters (UMT5 uses the same class)."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [("▁" + w, -1.0 - 0.01 * i) for i, w in enumerate(_WORDS)]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


def umt5_encoder(tokenizer, d_model: int = 32):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=0,
    )
    return UMT5EncoderModel(config).eval()


def wan_vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]).eval()


def wan_transformer(text_dim: int = 32):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=text_dim, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval()


def build_wan(directory: Path, seed: int = 0) -> Path:
    """A Wan2.1-T2V-shaped pipeline folder (what ``WanPipeline.save_pretrained`` writes)."""
    from diffusers import UniPCMultistepScheduler, WanPipeline

    torch.manual_seed(seed)
    tok = t5_tokenizer()
    pipe = WanPipeline(tokenizer=tok, text_encoder=umt5_encoder(tok), vae=wan_vae(), transformer=wan_transformer(),
                       scheduler=UniPCMultistepScheduler(**WAN_SCHEDULER))
    pipe.save_pretrained(directory)
    return Path(directory)
