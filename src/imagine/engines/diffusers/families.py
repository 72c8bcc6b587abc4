"""Model families: how a model directory is recognised, loaded and called.

The engine core knows nothing about any one model. A `FamilyAdapter` turns a
directory's `model_index.json` and component configs into a `ModelSpec` (what
the model is and what it can do, from JSON only), loads its pipelines, and
builds the pipeline call for one generation. Adding a family (LTX-Video,
HunyuanVideo, …) is a module with an adapter plus one entry in `ADAPTERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from PIL.Image import Image

JsonObject = Mapping[str, Any]
StepCallback = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]
"""diffusers' `callback_on_step_end(pipeline, step, timestep, tensors) -> tensors`."""


class UnsupportedModel(ValueError):
    """The directory is a diffusers model, but not one this engine can serve."""


@dataclass(frozen=True)
class ModelSpec:
    """What a model directory holds and what it can do, read from JSON only."""

    family: str
    variant: str
    """Allow-list key, e.g. `wan2.2-ti2v-5b`."""
    title: str
    """Human name, e.g. `Wan2.2-TI2V-5B`."""
    text_to_video: bool
    image_to_video: bool
    fps: int
    grid: int
    """Width and height must be multiples of this."""
    frame_step: int
    """Frame counts are `frame_step * k + 1`."""
    native_size: tuple[int, int]
    native_frames: int
    default_steps: int
    default_guidance: float
    negative_prompt: str
    """The model authors' standard negative prompt (the `normal` mode's)."""
    licence: str
    components: tuple[str, ...]
    """Components the pipeline cannot run without."""
    notes: tuple[str, ...] = ()
    """Anything an operator should know, e.g. a non-standard size."""


@dataclass
class LoadedModel:
    """A family's pipelines in memory, by task: `t2v` and, when supported, `i2v`.

    `denoisers` are the modules the speed settings apply to (compile, step
    cache, attention backend); `vae` is the decoder (tiling).
    """

    pipelines: dict[str, Any]
    denoisers: tuple[Any, ...]
    vae: Any
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RenderArgs:
    """One pipeline call, already validated and mapped onto the model's grid."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    frames: int
    steps: int
    guidance_scale: float
    generator: Any
    """A CPU `torch.Generator`: the same seed gives the same noise on any GPU."""
    callback: StepCallback
    image: Image | None = None
    decode: bool = True
    """False: stop at the latents (warm-up runs skip the VAE)."""


class FamilyAdapter(Protocol):
    """What the engine core needs from a model family."""

    family: str
    pipeline_classes: frozenset[str]
    """`_class_name` values in `model_index.json` this adapter recognises."""

    def identify(self, index: JsonObject, configs: Mapping[str, JsonObject]) -> ModelSpec:
        """The spec for a directory's JSON (`configs`: component -> its config,
        for those present); raise `UnsupportedModel` with the reason otherwise."""
        ...

    def load(self, model_dir: Path, spec: ModelSpec, dtype: Any, vae_dtype: Any) -> LoadedModel:
        """Load the pipelines from local files only (on CPU; the core places them)."""
        ...

    def call(self, pipeline: Any, args: RenderArgs) -> Any:
        """Run `pipeline`; return frames as a float array (frames, height, width, 3)
        in [0, 1], or the latents when `args.decode` is false."""
        ...


def _adapters() -> tuple[FamilyAdapter, ...]:
    from imagine.engines.diffusers.wan import WanAdapter

    return (WanAdapter(),)


ADAPTERS: tuple[FamilyAdapter, ...] = _adapters()


def adapter_for(pipeline_class: str) -> FamilyAdapter | None:
    """The adapter that recognises `pipeline_class`, if any."""
    for adapter in ADAPTERS:
        if pipeline_class in adapter.pipeline_classes:
            return adapter
    return None


def supported_pipeline_classes() -> list[str]:
    return sorted(name for adapter in ADAPTERS for name in adapter.pipeline_classes)
