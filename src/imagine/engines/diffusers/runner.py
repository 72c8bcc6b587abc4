"""The torch side of the diffusers engine: load, place, speed up, warm up, render.

Imported only by processes that run workers (`DiffusersEngine.prepare`).
Offline before anything else: `HF_HUB_OFFLINE` is set before diffusers and
transformers are imported, every load passes `local_files_only=True`, and
attention backends that fetch kernels (`*_hub`) are refused in configuration.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np
import torch
from diffusers.utils import logging as diffusers_logging
from numpy.typing import NDArray
from PIL.Image import Image
from transformers.utils import logging as transformers_logging

from imagine.engines.diffusers.config import DiffusersConfig
from imagine.engines.diffusers.families import (
    FamilyAdapter,
    LoadedModel,
    ModelSpec,
    RenderArgs,
)
from imagine.failures import Cancelled, FailureReason, TaskFailure
from imagine.observability.metrics import GPU_MEMORY_PEAK, GPU_OOM

log = logging.getLogger("imagine.engines.diffusers")

Frames = NDArray[np.uint8]
Report = Callable[[str, float], None]
"""`report(phase, fraction of that phase)`; phases: encode, denoise, decode."""

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

# Loading bars on a server's stderr are noise; the log says when a model is loaded.
diffusers_logging.disable_progress_bar()
transformers_logging.disable_progress_bar()


@dataclass(frozen=True)
class FrameRequest:
    """One generation in the model's own terms (already on its grid)."""

    task_id: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    frames: int
    seed: int
    image: Image | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"IMAGINE_DIFFUSERS_DEVICE={name}, but this torch sees no CUDA GPU")
    return device


class PipelineRunner:
    """A loaded model with the configured memory and speed settings applied.

    Not thread-safe: Wan's VAE keeps decode state on the module, so two calls
    at once return wrong frames. The engine serialises calls with a lock.
    """

    def __init__(self, config: DiffusersConfig, spec: ModelSpec, adapter: FamilyAdapter) -> None:
        self.config = config
        self.spec = spec
        self.adapter = adapter
        self.device = resolve_device(config.device)
        self.dtype = self._dtype()
        self.steps = config.steps or spec.default_steps
        self.guidance = (
            config.guidance_scale if config.guidance_scale is not None else spec.default_guidance
        )
        started = time.monotonic()
        self.model: LoadedModel = adapter.load(config.model_dir, spec, self.dtype, torch.float32)
        self._offload_owner: Any = None
        self._place()
        self._speed_up()
        log.info(
            "loaded %s from %s on %s (%s, memory %s) in %.1f s",
            spec.title,
            config.model_dir,
            self.device,
            str(self.dtype).removeprefix("torch."),
            config.memory,
            time.monotonic() - started,
        )

    def _dtype(self) -> torch.dtype:
        if self.config.dtype != "auto":
            return _DTYPES[self.config.dtype]
        return torch.bfloat16 if self.device.type == "cuda" else torch.float32

    # --- placement and speed ------------------------------------------------------------

    def _place(self) -> None:
        memory = self.config.memory
        main = self.model.pipelines["t2v"]
        if memory == "resident":
            main.to(self.device)
        elif memory == "group-offload":
            # Hooks on the modules themselves: the image-to-video pipeline shares them.
            main.enable_group_offload(
                onload_device=self.device,
                offload_device=torch.device("cpu"),
                offload_type="leaf_level",
                use_stream=self.device.type == "cuda",
            )
        # "offload" (model CPU offload) is enabled per pipeline in `_activate`.
        tiling = self.config.vae_tiling
        if tiling or (tiling is None and memory != "resident"):
            self.model.vae.enable_tiling()

    def _activate(self, pipeline: Any) -> None:
        """Model CPU offload hooks belong to one pipeline; move them when the task
        switches between text- and image-to-video (they share the modules)."""
        if self.config.memory == "offload" and self._offload_owner is not pipeline:
            pipeline.enable_model_cpu_offload(device=self.device)
            self._offload_owner = pipeline

    def _speed_up(self) -> None:
        config = self.config
        for denoiser in self.model.denoisers:
            if config.attention:
                try:
                    denoiser.set_attention_backend(config.attention)
                except Exception as exc:
                    raise ValueError(
                        f"attention backend {config.attention!r} is unusable here: {exc}"
                    ) from None
            if config.step_cache == "first-block":
                from diffusers import FirstBlockCacheConfig

                denoiser.enable_cache(FirstBlockCacheConfig(threshold=config.threshold))
            elif config.step_cache == "mag":
                from diffusers import MagCacheConfig

                denoiser.enable_cache(
                    MagCacheConfig(
                        threshold=config.threshold,
                        mag_ratios=list(config.mag_ratios or ()),
                        num_inference_steps=self.steps,
                    )
                )
            if config.compile:
                # A step cache decides per step, outside the graph (`torch.compiler.disable`),
                # so with one the blocks compile with a graph break instead of fullgraph.
                denoiser.compile_repeated_blocks(
                    fullgraph=config.step_cache == "none", backend=config.compile_backend
                )

    def warm_up(self, shapes: Iterable[tuple[int, int, int]]) -> int:
        """Run one step at each (width, height, frames) so that every compile
        happens now, not in a client's task; returns how many shapes ran."""
        todo = sorted(set(shapes))
        if not todo:
            return 0
        import torch._dynamo

        dynamo: Any = torch._dynamo.config
        # Past the limit torch silently falls back to eager: keep every shape compiled.
        dynamo.recompile_limit = max(dynamo.recompile_limit, len(todo) + 8)
        dynamo.accumulated_recompile_limit = max(
            dynamo.accumulated_recompile_limit, 4 * len(todo) + 64
        )
        pipeline = self.model.pipelines["t2v"]
        for number, (width, height, frames) in enumerate(todo, start=1):
            started = time.monotonic()
            self._activate(pipeline)
            try:
                self.adapter.call(
                    pipeline,
                    RenderArgs(
                        prompt="warm-up",
                        negative_prompt="",
                        width=width,
                        height=height,
                        frames=frames,
                        steps=1,
                        guidance_scale=self.guidance,
                        generator=torch.Generator("cpu").manual_seed(0),
                        callback=lambda _p, _i, _t, tensors: tensors,
                        decode=False,
                    ),
                )
            finally:
                pipeline.maybe_free_model_hooks()
            log.info(
                "warm-up %d/%d: %dx%d, %d frames in %.1f s",
                number,
                len(todo),
                width,
                height,
                frames,
                time.monotonic() - started,
            )
        return len(todo)

    # --- one generation ----------------------------------------------------------------

    def render(
        self, request: FrameRequest, should_stop: Callable[[], bool], report: Report
    ) -> Frames:
        """Frames as uint8 (frames, height, width, 3).

        Raises `Cancelled` within one denoising step of `should_stop()` turning
        true (raising from the step callback: setting the pipeline's
        `_interrupt` would still run the VAE decode), and `TaskFailure` for an
        out-of-memory error or any other pipeline failure.
        """
        pipeline = self.model.pipelines["i2v" if request.image is not None else "t2v"]

        def on_step(
            pipe: Any, step: int, _timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            report("denoise", (step + 1) / max(1, int(pipe.num_timesteps)))
            if should_stop():
                raise Cancelled(f"task {request.task_id}: cancelled at step {step + 1}")
            return tensors

        args = RenderArgs(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            width=request.width,
            height=request.height,
            frames=request.frames,
            steps=self.steps,
            guidance_scale=self.guidance,
            generator=torch.Generator("cpu").manual_seed(request.seed),
            callback=on_step,
            image=request.image,
        )
        out_of_memory = False
        on_gpu = self.device.type == "cuda"
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            report("encode", 0.0)
            self._activate(pipeline)
            output = self.adapter.call(pipeline, args)
        except (Cancelled, TaskFailure):
            raise
        except torch.cuda.OutOfMemoryError:  # also raised as torch.OutOfMemoryError
            out_of_memory = True  # handled below, once the traceback's tensors are gone
        except Exception as exc:
            log.exception("task %s: pipeline failed", request.task_id)
            raise TaskFailure(
                FailureReason.BUILD_FAILED, f"pipeline failed: {type(exc).__name__}: {exc}"
            ) from None
        finally:
            # Offload and step-cache hooks are stale after an abort; this resets them.
            pipeline.maybe_free_model_hooks()
            if on_gpu:
                GPU_MEMORY_PEAK.labels(str(self.device)).set(
                    torch.cuda.max_memory_allocated(self.device)
                )
        if out_of_memory:
            GPU_OOM.labels(str(self.device)).inc()
            self.free_memory()
            raise TaskFailure(
                FailureReason.BUILD_FAILED,
                f"out of GPU memory at {request.width}x{request.height}, {request.frames} frames "
                f"(memory preset {self.config.memory})",
            )
        report("decode", 1.0)
        return to_uint8(output)

    def free_memory(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def to_uint8(frames: Any) -> Frames:
    """Pipeline output in [0, 1] (float array or tensor) → uint8 RGB frames."""
    array = frames.float().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise TaskFailure(
            FailureReason.BUILD_FAILED, f"unexpected pipeline output shape {array.shape}"
        )
    return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
