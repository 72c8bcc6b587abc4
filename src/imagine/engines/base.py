"""The interface every generation engine implements.

An engine turns one validated job into MP4 files on local disk. It never
touches the database, the HTTP layer or storage: the worker owns those.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from imagine.media.images import InputImage

ProgressCallback = Callable[[float], None]
"""Called with the fraction done, 0.0-1.0; must be cheap and thread-safe."""


@dataclass(frozen=True)
class EngineCapabilities:
    """What an engine can do; requests outside it are refused at submit time."""

    modes: frozenset[str] = frozenset({"normal", "fun", "spicy", "custom"})
    resolutions: frozenset[str] = frozenset({"480p", "720p"})
    max_images: int = 7
    min_duration: int = 1
    max_duration: int = 15
    max_duration_multi_image: int | None = None
    """Longest duration when more than one image is given (None: `max_duration`)."""
    sizes: Mapping[tuple[str, str], tuple[int, int]] | None = None
    """(ratio, resolution) -> (width, height) for an engine with its own size grid;
    pairs missing from it are refused at submit. None: the DESIGN table."""
    fps: int = 24
    """Frame rate of the videos the engine writes (jobs carry it as `fps`)."""


@dataclass(frozen=True)
class GenerationJob:
    """Everything an engine needs, already validated and with images fetched."""

    task_id: str
    prompt: str
    mode: str
    ratio: str
    resolution: str
    width: int
    height: int
    duration: int
    seed: int | None
    images: tuple[InputImage, ...] = ()
    fps: int = 24
    resume: Mapping[str, Any] = field(default_factory=dict)
    """What an earlier attempt of this task saved with `JobControl.checkpoint`."""


Checkpoint = Callable[[dict[str, Any]], Awaitable[None]]


async def _no_checkpoint(_state: dict[str, Any]) -> None:
    return None


@dataclass
class JobControl:
    """How the worker talks to a running engine: progress out, cancellation in."""

    on_progress: ProgressCallback = lambda _fraction: None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    checkpoint: Checkpoint = field(default=_no_checkpoint)
    """Save state a later attempt can resume from (e.g. an upstream request id),
    so a retried or re-claimed task does not start paid work twice."""

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()


class Engine(Protocol):
    """A video generator. Implementations live in `imagine.engines.<name>`.

    An engine may also define `prepare()`: heavy start-up work (loading model
    weights, warm-up) that only processes running workers need. `WorkerPool`
    calls it once before its workers claim anything; API-only processes never do.
    """

    name: str
    capabilities: EngineCapabilities

    async def generate(self, job: GenerationJob, workdir: Path, control: JobControl) -> list[Path]:
        """Write one or more MP4 files into `workdir` and return their paths.

        Raise `imagine.failures.TaskFailure` for a failure the client should
        see, `imagine.failures.Cancelled` when `control.cancel_event` is set.
        """
        ...


BlockingRender = Callable[[GenerationJob, Path, ProgressCallback, Callable[[], bool]], None]


OUTPUT_NAME = "video.mp4"  # the file an engine writes into its workdir


async def render_in_thread(
    render: BlockingRender, job: GenerationJob, workdir: Path, control: JobControl
) -> list[Path]:
    """Run a blocking `render(job, path, on_progress, should_stop)` in a worker
    thread, writing `workdir / OUTPUT_NAME`; returns that path, as `generate` does.

    A thread cannot be killed: when the awaiting task is cancelled (a time limit,
    a shutdown), the render is told to stop at its next check instead.
    """
    abandoned = threading.Event()

    def should_stop() -> bool:
        return control.cancel_event.is_set() or abandoned.is_set()

    path = workdir / OUTPUT_NAME
    try:
        await asyncio.to_thread(render, job, path, control.on_progress, should_stop)
    except asyncio.CancelledError:
        abandoned.set()
        raise
    return [path]
