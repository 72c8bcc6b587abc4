"""The `diffusers` engine core: capabilities, one generation at a time, MP4 output.

Start-up: the model directory is inspected from its JSON files (a broken one
is refused, naming the missing component), which is all an API-only process
needs to validate requests. `prepare()` (called by the worker pool) loads the
weights once and, with compile on, warms up every allowed shape before the
first task is claimed.

A generation: the job's mode becomes a prompt preset, its seed a CPU
`torch.Generator`; the pipeline runs in a thread under a lock (two calls on one
Wan pipeline at once return wrong frames, and a task abandoned by a time limit
keeps its thread until the next step, so an asyncio lock would not do);
progress comes from the step callback; the frames are encoded to H.264 at the
model's frame rate.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

from imagine.engines.base import (
    OUTPUT_NAME,
    EngineCapabilities,
    GenerationJob,
    JobControl,
    ProgressCallback,
    render_in_thread,
)
from imagine.engines.diffusers.check import ModelDirectoryError, inspect_model_dir
from imagine.engines.diffusers.config import DiffusersConfig
from imagine.engines.diffusers.families import FamilyAdapter, ModelSpec, adapter_for
from imagine.engines.diffusers.mapping import apply_mode, frame_count, size_table, snap_size
from imagine.failures import Cancelled, FailureReason, TaskFailure
from imagine.media.video import Mp4Writer
from imagine.observability.metrics import STAGE_DURATION
from imagine.settings import MODES, Settings, SettingsError

if TYPE_CHECKING:
    from imagine.engines.diffusers.runner import PipelineRunner

__all__ = ["OUTPUT_NAME", "PHASES", "DiffusersEngine", "create_diffusers_engine"]

log = logging.getLogger("imagine.engines.diffusers")

REQUIRED_PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "ftfy")
PHASES: dict[str, tuple[float, float]] = {
    "encode": (0.0, 0.05),  # prompt (and image) encoding, before the first step
    "denoise": (0.05, 0.90),  # one callback per step
    "decode": (0.90, 0.95),  # the VAE turns latents into frames
    "write": (0.95, 1.0),  # H.264 encoding
}
_LOCK_POLL_SECONDS = 0.05

Frames = NDArray[np.uint8]


def create_diffusers_engine(settings: Settings) -> DiffusersEngine:
    """The engine from `IMAGINE_DIFFUSERS_*` settings; `SettingsError` if it cannot run.

    Needs the model directory's files but not torch: an API-only process
    validates requests from the JSON alone.
    """
    try:
        return DiffusersEngine(DiffusersConfig.from_settings(settings))
    except ValueError as exc:  # ModelDirectoryError included
        raise SettingsError(str(exc)) from None


class DiffusersEngine:
    """Open-weights video generation from a local diffusers model directory."""

    name = "diffusers"

    def __init__(self, config: DiffusersConfig) -> None:
        """Inspect (not load) the model directory; raises `ModelDirectoryError`."""
        report = inspect_model_dir(config.model_dir)
        adapter = adapter_for(report.pipeline_class or "")
        if not report.ok or report.spec is None or adapter is None:
            raise ModelDirectoryError(report.refusal())
        self.config = config
        self.spec: ModelSpec = report.spec
        self.adapter: FamilyAdapter = adapter
        self.fps = config.fps or self.spec.fps
        self.sizes = size_table(self.spec, config.ratios, config.resolutions, config.size_scale)
        self.capabilities = EngineCapabilities(
            modes=frozenset(MODES),
            resolutions=frozenset(config.resolutions),
            max_images=1 if self.spec.image_to_video else 0,
            min_duration=1,
            max_duration=config.max_duration,
            sizes=self.sizes,
            fps=self.fps,
        )
        self._runner: PipelineRunner | None = None
        self._load_lock = threading.Lock()
        self._generation_lock = threading.Lock()

    # --- start-up -----------------------------------------------------------------------

    def prepare(self) -> None:
        """Load the weights once (and compile and warm up when configured).

        Raises `SettingsError` when the model or a setting cannot work here.
        """
        with self._load_lock:
            if self._runner is not None:
                return
            missing = [p for p in REQUIRED_PACKAGES if importlib.util.find_spec(p) is None]
            if missing:
                raise SettingsError(
                    f"the diffusers engine needs {', '.join(missing)}: "
                    "pip install 'imagine[diffusers]'"
                )
            from imagine.engines.diffusers.runner import PipelineRunner

            try:
                runner = PipelineRunner(self.config, self.spec, self.adapter)
                if self.config.compile:
                    runner.warm_up(self.warmup_shapes())
            except SettingsError:
                raise
            except ValueError as exc:  # a setting that cannot work here
                raise SettingsError(f"diffusers engine: {exc}") from None
            except Exception as exc:  # unreadable weights, a broken CUDA set-up, …
                log.exception("loading %s failed", self.config.model_dir)
                raise SettingsError(
                    f"diffusers engine: cannot load {self.config.model_dir}: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
            self._runner = runner

    def warmup_shapes(self) -> list[tuple[int, int, int]]:
        """Every (width, height, frames) a task may need: each new one recompiles."""
        durations = range(self.capabilities.min_duration, self.capabilities.max_duration + 1)
        frames = {frame_count(d, self.fps, self.spec.frame_step) for d in durations}
        return sorted({(w, h, f) for (w, h) in self.sizes.values() for f in frames})

    # --- one job ------------------------------------------------------------------------

    def frame_plan(self, job: GenerationJob) -> tuple[int, int, int]:
        """(width, height, frames) for a job: the engine's own table, so a job built
        from another table (or before a settings change) still lands on the grid."""
        size = self.sizes.get((job.ratio, job.resolution))
        if size is None:
            size = snap_size(job.width, job.height, self.spec.grid, self.config.size_scale)
        return size[0], size[1], frame_count(job.duration, self.fps, self.spec.frame_step)

    async def generate(self, job: GenerationJob, workdir: Path, control: JobControl) -> list[Path]:
        """Render `workdir / OUTPUT_NAME` in a thread and return it."""
        return await render_in_thread(self.run, job, workdir, control)

    def run(
        self,
        job: GenerationJob,
        path: Path,
        on_progress: ProgressCallback,
        should_stop: Callable[[], bool],
    ) -> None:
        """Blocking: render the job and write the MP4 (timed as the `encode` stage)."""
        frames = self.render(job, on_progress, should_stop)
        started = time.perf_counter()
        self.write(job, frames, path, on_progress, should_stop)
        STAGE_DURATION.labels(self.name, "encode").observe(time.perf_counter() - started)

    def write(
        self,
        job: GenerationJob,
        frames: Frames,
        path: Path,
        on_progress: ProgressCallback,
        should_stop: Callable[[], bool],
    ) -> None:
        """Encode frames to H.264 at the model's frame rate (atomically, via a temp file)."""
        progress = _PhaseProgress(on_progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        count, height, width = frames.shape[0], frames.shape[1], frames.shape[2]
        try:
            with Mp4Writer(partial, width, height, self.fps) as writer:
                for index in range(count):
                    if should_stop():
                        raise Cancelled(f"task {job.task_id}: cancelled while writing")
                    writer.write_rgb(frames[index])
                    progress("write", (index + 1) / count)
            partial.replace(path)
        except (Cancelled, TaskFailure):
            raise
        except Exception as exc:
            raise TaskFailure(
                FailureReason.BUILD_FAILED, f"writing the MP4 failed: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            partial.unlink(missing_ok=True)
        on_progress(1.0)

    def render(
        self,
        job: GenerationJob,
        on_progress: ProgressCallback,
        should_stop: Callable[[], bool],
    ) -> Frames:
        """Blocking: the job's frames, uint8 (frames, height, width, 3), before encoding."""
        from imagine.engines.diffusers.runner import FrameRequest

        self.prepare()
        assert self._runner is not None
        width, height, frames = self.frame_plan(job)
        prompt, negative = apply_mode(job.mode, job.prompt, self.spec.negative_prompt)
        image = _first_frame(job, width, height) if job.images else None
        seed = job.seed if job.seed is not None else secrets.randbelow(2**32)
        request = FrameRequest(
            task_id=job.task_id,
            prompt=prompt,
            negative_prompt=negative,
            width=width,
            height=height,
            frames=frames,
            seed=seed,
            image=image,
        )
        while not self._generation_lock.acquire(timeout=_LOCK_POLL_SECONDS):
            if should_stop():
                raise Cancelled(f"task {job.task_id}: cancelled while waiting for the pipeline")
        try:
            if should_stop():
                raise Cancelled(f"task {job.task_id}: cancelled before it started")
            log.info(
                "task %s: %dx%d, %d frames at %d fps, seed %d, %s",
                job.task_id,
                width,
                height,
                frames,
                self.fps,
                seed,
                "image-to-video" if image is not None else "text-to-video",
            )
            output = self._runner.render(request, should_stop, _PhaseProgress(on_progress))
        finally:
            self._generation_lock.release()
        if output.shape[:3] != (frames, height, width):
            raise TaskFailure(
                FailureReason.BUILD_FAILED,
                f"pipeline returned {output.shape[:3]}, expected {(frames, height, width)}",
            )
        return output


class _PhaseProgress:
    """Maps (phase, fraction of it) onto the job's single 0-1 progress value."""

    def __init__(self, on_progress: ProgressCallback) -> None:
        self._on_progress = on_progress
        self._phase = ""

    def __call__(self, phase: str, fraction: float) -> None:
        low, high = PHASES[phase]
        if phase != self._phase:
            log.debug("phase %s", phase)
            self._phase = phase
        self._on_progress(low + (high - low) * min(1.0, max(0.0, fraction)))


def _first_frame(job: GenerationJob, width: int, height: int) -> Image.Image:
    """The job's image cropped to the frame's aspect ratio and scaled to it."""
    if len(job.images) > 1:
        raise TaskFailure(
            FailureReason.FILE_TYPE, f"{len(job.images)} images given; this model animates one"
        )
    try:
        with Image.open(io.BytesIO(job.images[0].data)) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except Exception as exc:
        raise TaskFailure(FailureReason.FILE_TYPE, f"cannot decode the image: {exc}") from None
    return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
