"""Build a tiny, randomly initialised Wan model directory, for tests and demos.

    python -m imagine.engines.diffusers.tiny DIR [--layout ti2v-5b|t2v-1.3b] [--seed N]

The directory has the exact layout of a real download (`save_pretrained`:
`model_index.json`, tokenizer, UMT5 text encoder, Wan transformer, Wan VAE,
UniPC scheduler), so the engine loads it through its normal path; only the
sizes are tiny (a 2-layer transformer, a 3-channel-wide VAE). Its videos are
coloured noise, not pictures: it proves the plumbing, on CPU, in a fraction of
a second per clip. The `ti2v-5b` layout (default) is Wan2.2-TI2V-5B's: 48
latent channels, 16x VAE, `expand_timesteps`, text and image to video; the
`t2v-1.3b` layout is Wan2.1-T2V's (16 channels, 8x VAE, text only).

Serve it on CPU at small sizes (about 64 px, 9 frames for a 1 s clip):

    IMAGINE_DIFFUSERS_SIZE_SCALE=0.125 IMAGINE_DIFFUSERS_FPS=8 IMAGINE_DIFFUSERS_STEPS=4 \\
        imagine serve --engine diffusers --model DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

LAYOUTS = ("ti2v-5b", "t2v-1.3b")
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 .,!?'-"


def build_tiny_wan(path: Path, layout: str = "ti2v-5b", seed: int = 0) -> Path:
    """Write a tiny Wan model directory to `path` (created) and return it."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}")
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    # A character-level Unigram tokenizer: ids <pad>=0, </s>=1, <unk>=2, as T5's.
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in _CHARS]
    core = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    core.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )

    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(vocab),
            d_model=32,  # = the transformer's text_dim
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
        )
    )
    ti2v = layout == "ti2v-5b"
    channels = 48 if ti2v else 16
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=channels,
        out_channels=channels,
        text_dim=32,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,  # as the real configs: a small value fails at wide sizes
    )
    # TI2V-5B's VAE: 2x2 patches of 3 channels in, 16x spatial compression, residual.
    vae_layout: dict[str, Any] = {}
    if ti2v:
        vae_layout = {
            "in_channels": 12,
            "out_channels": 12,
            "is_residual": True,
            "patch_size": 2,
            "scale_factor_spatial": 16,
        }
    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=channels,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * channels,
        latents_std=[1.0] * channels,
        **vae_layout,
    )
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0 if ti2v else 3.0
    )
    for module in (text_encoder, transformer, vae):
        module.eval()  # built from configs they start in training mode (dropout)
    pipeline = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        expand_timesteps=ti2v,
    )
    path.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imagine.engines.diffusers.tiny",
        description="Build a tiny random Wan model directory (tests, CPU demos).",
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("--layout", choices=LAYOUTS, default="ti2v-5b")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build_tiny_wan(args.directory, args.layout, args.seed)
    print(f"tiny {args.layout} Wan model written to {args.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
