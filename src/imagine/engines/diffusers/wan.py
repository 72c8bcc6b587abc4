"""The Wan family: Wan2.2-TI2V-5B (text and image to video) and Wan2.1-T2V.

The variant is recognised by its layout, not its name: TI2V-5B has a 48-channel
latent space (`AutoencoderKLWan` with `z_dim=48`, `patch_size=2`, 16× spatial
compression) and `expand_timesteps=true`; Wan2.1-T2V has 16 channels and an 8×
VAE. The transformer's depth and width tell the published sizes apart; any
other size with a known layout is accepted and reported as non-standard (the
tiny test models are). Wan2.2's two-expert A14B models and Wan2.1's CLIP-based
image-to-video pipeline are recognised and refused with a reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagine.engines.diffusers.families import (
    JsonObject,
    LoadedModel,
    ModelSpec,
    RenderArgs,
    UnsupportedModel,
)

# The Wan authors' standard negative prompt, as diffusers' examples give it.
NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, "
    "images, static, overall gray, worst quality, low quality, JPEG compression residue, ugly, "
    "incomplete, extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, "
    "misshapen limbs, fused fingers, still picture, messy background, three legs, many people "
    "in the background, walking backwards"
)
COMPONENTS = ("tokenizer", "text_encoder", "transformer", "vae", "scheduler")


@dataclass(frozen=True)
class _Layout:
    key: str
    title: str
    image_to_video: bool
    fps: int
    native_size: tuple[int, int]
    native_frames: int


_TI2V = _Layout("wan2.2-ti2v", "Wan2.2-TI2V-5B", True, 24, (1280, 704), 121)
_T2V = _Layout("wan2.1-t2v", "Wan2.1-T2V", False, 16, (832, 480), 81)

# (layout key, layers, heads, head dim) → published checkpoint: variant, title, native size.
_PUBLISHED: dict[tuple[str, int, int, int], tuple[str, str, tuple[int, int]]] = {
    ("wan2.2-ti2v", 30, 24, 128): ("wan2.2-ti2v-5b", "Wan2.2-TI2V-5B", (1280, 704)),
    ("wan2.1-t2v", 30, 12, 128): ("wan2.1-t2v-1.3b", "Wan2.1-T2V-1.3B", (832, 480)),
    ("wan2.1-t2v", 40, 40, 128): ("wan2.1-t2v-14b", "Wan2.1-T2V-14B", (1280, 720)),
}


class WanAdapter:
    """Recognises, loads and calls Wan pipelines: `WanPipeline`, and for TI2V-5B a
    `WanImageToVideoPipeline` sharing its weights (as `from_pipe` makes one)."""

    family = "wan"
    pipeline_classes = frozenset({"WanPipeline", "WanImageToVideoPipeline"})

    def identify(self, index: JsonObject, configs: Mapping[str, JsonObject]) -> ModelSpec:
        if index.get("_class_name") == "WanImageToVideoPipeline":
            raise UnsupportedModel(
                "Wan2.1 image-to-video (WanImageToVideoPipeline with a CLIP image encoder) is "
                "not supported; Wan2.2-TI2V-5B does image-to-video from its text-to-video layout"
            )
        if _present(index.get("transformer_2")) or index.get("boundary_ratio") is not None:
            raise UnsupportedModel(
                "two-expert Wan2.2 models (transformer_2, boundary_ratio: the A14B ones) are "
                "not supported yet; use Wan2.2-TI2V-5B"
            )
        transformer, vae = configs.get("transformer"), configs.get("vae")
        if transformer is None or vae is None:
            raise UnsupportedModel(
                "cannot tell the variant without transformer/config.json and vae/config.json"
            )
        channels = transformer.get("in_channels")
        z_dim = vae.get("z_dim")
        expand = bool(index.get("expand_timesteps", False))
        if channels == 48 and z_dim == 48:
            if not expand:
                raise UnsupportedModel(
                    "a 48-channel (TI2V-5B) Wan model needs expand_timesteps=true in "
                    "model_index.json"
                )
            layout = _TI2V
        elif channels == 16 and z_dim == 16 and not expand:
            if transformer.get("image_dim") is not None:
                raise UnsupportedModel("a Wan transformer with an image embedding needs CLIP")
            layout = _T2V
        else:
            raise UnsupportedModel(
                f"unknown Wan layout: transformer in_channels={channels}, vae z_dim={z_dim}, "
                f"expand_timesteps={expand} (known: 48/48/true TI2V-5B, 16/16/false Wan2.1-T2V)"
            )

        layers = int(transformer.get("num_layers", 0))
        heads = int(transformer.get("num_attention_heads", 0))
        head_dim = int(transformer.get("attention_head_dim", 0))
        published = _PUBLISHED.get((layout.key, layers, heads, head_dim))
        notes: tuple[str, ...] = ()
        if published is None:
            variant, title, native = layout.key, f"{layout.title} layout", layout.native_size
            notes = (
                f"non-standard size ({layers} layers, {heads}×{head_dim} wide): not a published "
                "checkpoint",
            )
        else:
            variant, title, native = published
        patch = transformer.get("patch_size") or [1, 2, 2]
        grid = int(vae.get("scale_factor_spatial") or 8) * int(patch[1])
        return ModelSpec(
            family=self.family,
            variant=variant,
            title=title,
            text_to_video=True,
            image_to_video=layout.image_to_video,
            fps=layout.fps,
            grid=grid,
            frame_step=int(vae.get("scale_factor_temporal") or 4),
            native_size=native,
            native_frames=layout.native_frames,
            default_steps=50,
            default_guidance=5.0,
            negative_prompt=NEGATIVE_PROMPT,
            licence="Apache-2.0",
            components=COMPONENTS,
            notes=notes,
        )

    def load(self, model_dir: Path, spec: ModelSpec, dtype: Any, vae_dtype: Any) -> LoadedModel:
        from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanPipeline

        # The VAE in float32: Wan's decoder loses visible quality in bfloat16.
        vae = AutoencoderKLWan.from_pretrained(
            model_dir, subfolder="vae", dtype=vae_dtype, local_files_only=True
        )
        t2v = WanPipeline.from_pretrained(model_dir, vae=vae, dtype=dtype, local_files_only=True)
        for name in COMPONENTS:
            module: Any = getattr(t2v, name, None)
            if hasattr(module, "eval"):
                module.eval()  # dropout off, or a seed stops being repeatable
        t2v.set_progress_bar_config(disable=True)
        pipelines: dict[str, Any] = {"t2v": t2v}
        if spec.image_to_video:
            # What `WanImageToVideoPipeline.from_pipe(t2v)` builds (every module shared,
            # no image encoder), without its final `.to(dtype)`: that would cast the
            # shared modules to one dtype (float32 unless told otherwise), the float32
            # VAE and the transformer's float32 norms included, for both pipelines.
            i2v = WanImageToVideoPipeline(
                tokenizer=t2v.tokenizer,
                text_encoder=t2v.text_encoder,
                vae=t2v.vae,
                scheduler=t2v.scheduler,
                transformer=t2v.transformer,
                transformer_2=None,
                image_encoder=None,
                image_processor=None,
                boundary_ratio=t2v.config.boundary_ratio,
                expand_timesteps=t2v.config.expand_timesteps,
            )
            i2v.set_progress_bar_config(disable=True)
            pipelines["i2v"] = i2v
        return LoadedModel(pipelines=pipelines, denoisers=(t2v.transformer,), vae=vae)

    def call(self, pipeline: Any, args: RenderArgs) -> Any:
        kwargs: dict[str, Any] = {
            "prompt": args.prompt,
            "negative_prompt": args.negative_prompt,
            "height": args.height,
            "width": args.width,
            "num_frames": args.frames,
            "num_inference_steps": args.steps,
            "guidance_scale": args.guidance_scale,
            "generator": args.generator,
            "output_type": "np" if args.decode else "latent",
            "callback_on_step_end": args.callback,
        }
        if args.image is not None:
            kwargs["image"] = args.image
        return pipeline(**kwargs).frames[0]


def _present(entry: object) -> bool:
    """A model_index component entry that names a class (`[null, null]` does not)."""
    return isinstance(entry, list) and any(part is not None for part in entry)
