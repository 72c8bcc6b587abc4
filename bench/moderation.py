"""The moderation stage's cost: what it adds to a task, beside the preview
engine's render of a 1 s 480p clip measured in the same run, and the memory
its classifiers take, loaded once per worker process.

    python -m bench.moderation [--tasks 200]

The built-in policy, with an operator word list of 1,000 entries and a hash
list of 10,000 known images, as a worker runs it (`Moderator.check_input`
and `check_output`, in the worker's thread, from the event loop).
Resident memory is read from /proc before the moderator is built, after its
first `prepare()` (the text classifier loaded), after three more moderators
were built and prepared in the same process (they share the loaded model),
and around a first and a second round of all the checks (the second must
not grow: nothing is kept per task).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import statistics
import string
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
from PIL import Image

from bench.latency import percentile
from imagine.engines.base import GenerationJob, JobControl
from imagine.engines.preview import PreviewEngine
from imagine.media.images import InputImage
from imagine.moderation import build_moderator
from imagine.moderation.moderator import Moderator
from imagine.settings import load_settings

PROMPTS = (
    "a lighthouse at dusk, waves breaking on the rocks",
    "a red fox running through fresh snow, slow motion",
    "Scunthorpe United fans celebrating a goal in the rain",
    "assassin's creed trailer in the style of a renaissance painting",
    "time-lapse of clouds over a mountain ridge, golden hour, 35mm film grain",
)


def _rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _lists(directory: Path) -> tuple[Path, Path]:
    rng = random.Random(7)
    words = directory / "words.txt"
    words.write_text(
        "\n".join("".join(rng.choices(string.ascii_lowercase, k=9)) for _ in range(1000))
    )
    hashes = directory / "hashes.txt"
    hashes.write_text("\n".join(f"{rng.getrandbits(64):016x} known {n}" for n in range(10_000)))
    return words, hashes


def _photo_720p() -> InputImage:
    rng = np.random.default_rng(3)
    cells = (rng.random((18, 32, 3)) * 255).astype(np.uint8)
    picture = Image.fromarray(cells).resize((1280, 720), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    return InputImage(buffer.getvalue(), "image/jpeg", 1280, 720)


def _render(workdir: Path, resolution: str, duration: int) -> Path:
    width, height = (480, 480) if resolution == "480p" else (1280, 720)
    job = GenerationJob(
        task_id="bench",
        prompt=PROMPTS[0],
        mode="normal",
        ratio="1:1" if resolution == "480p" else "16:9",
        resolution=resolution,
        width=width,
        height=height,
        duration=duration,
        seed=1,
    )
    return asyncio.run(PreviewEngine().generate(job, workdir, JobControl()))[0]


async def _timed(samples: int, action: Callable[[int], Awaitable[None]]) -> list[float]:
    times = []
    for number in range(samples):
        start = time.perf_counter()
        await action(number)
        times.append((time.perf_counter() - start) * 1000)
    return times


def _figure(times: list[float], baseline_ms: float) -> str:
    p50 = statistics.median(times)
    return (
        f"p50 {p50:.1f} ms, p95 {percentile(times, 95):.1f} ms "
        f"({p50 / baseline_ms:.3f}× the 1 s 480p preview render)"
    )


def run(tasks: int = 200) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        words, hashes = _lists(directory)
        settings = load_settings(
            data_dir=directory / "data",
            moderation_words=(words,),
            moderation_image_hashes=(hashes,),
        )
        before = _rss()
        moderator = build_moderator(settings)
        assert isinstance(moderator, Moderator)
        started = time.perf_counter()
        moderator.prepare()
        load_seconds = time.perf_counter() - started
        loaded = _rss()
        for _ in range(3):
            other = build_moderator(settings)
            assert other is not None
            other.prepare()
        shared = _rss()

        render_times = []
        for _ in range(5):
            with tempfile.TemporaryDirectory() as work:
                start = time.perf_counter()
                _render(Path(work), "480p", 1)
                render_times.append((time.perf_counter() - start) * 1000)
        baseline = statistics.median(render_times)

        async def text_only(number: int) -> None:
            await moderator.check_input("normal", PROMPTS[number % len(PROMPTS)], [])

        photo = _photo_720p()

        async def with_image(number: int) -> None:
            await moderator.check_input("normal", PROMPTS[number % len(PROMPTS)], [photo])

        video = _render(directory, "720p", 6)

        async def output(_number: int) -> None:
            await moderator.check_output("normal", [video])

        async def measure() -> tuple[list[float], list[float], list[float], int, int, int]:
            # One event loop, as in a worker. Its threads' memory arenas grow to
            # what the decoders need the first times; a final round of every
            # stage after the timed ones shows whether anything keeps growing.
            start = _rss()
            text = await _timed(tasks, text_only)
            image = await _timed(tasks, with_image)
            frames = await _timed(max(tasks // 10, 5), output)
            settled = _rss()
            await _timed(tasks, text_only)
            await _timed(tasks, with_image)
            await _timed(max(tasks // 10, 5), output)
            return text, image, frames, start, settled, _rss()

        text_times, image_times, output_times, start, settled, after = asyncio.run(measure())

    mib = 1024 * 1024
    rows = [
        ("preview render, 1 s 1:1 480p (baseline)", f"p50 {baseline:.0f} ms"),
        ("input stage, prompt only (lists + text classifier)", _figure(text_times, baseline)),
        ("input stage, prompt and one 720p JPEG (+ 10,000 hashes)", _figure(image_times, baseline)),
        ("output stage, 4 frames of a 6 s 720p video", _figure(output_times, baseline)),
        (
            "text classifier, first load in a process",
            f"{load_seconds:.2f} s, +{(loaded - before) / mib:.0f} MiB resident",
        ),
        (
            "three more moderators in the same process",
            f"+{(shared - loaded) / mib:.1f} MiB (the model is loaded once per process)",
        ),
        (
            "the checks' working memory (decoders, threads), first round",
            f"+{(settled - start) / mib:.1f} MiB resident",
        ),
        ("the same checks again", f"+{(after - settled) / mib:.1f} MiB resident (no growth)"),
    ]
    return "| measure | result |\n|---|---|\n" + "\n".join(f"| {n} | {v} |" for n, v in rows)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.moderation", description=__doc__)
    parser.add_argument("--tasks", type=int, default=200, help="checks per measure")
    args = parser.parse_args()
    print(run(args.tasks))


if __name__ == "__main__":
    main()
