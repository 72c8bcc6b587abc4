"""The preview engine and the MP4 writer, checked on real encoded files.

Every test decodes what was written (PyAV, via `probe_mp4`/`read_frame`):
the engine's promise is "a genuine MP4 of the requested size and length,
repeatable byte for byte", so mocks would prove nothing.
"""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from imagine.engines.base import Engine, EngineCapabilities, GenerationJob, JobControl
from imagine.engines.preview import OUTPUT_NAME, PreviewEngine
from imagine.failures import Cancelled, FailureReason, TaskFailure
from imagine.media.images import InputImage
from imagine.media.video import Mp4Writer, probe_mp4, read_frame

RED = (210, 40, 40)
GREEN = (40, 180, 60)
BLUE = (40, 70, 210)
YELLOW = (230, 210, 40)


def make_job(**overrides: object) -> GenerationJob:
    """A small, fast job (160×160, 1 s) unless told otherwise."""
    fields: dict[str, object] = {
        "task_id": "task-1",
        "prompt": "A lighthouse on a cliff at dusk, waves crashing below",
        "mode": "normal",
        "ratio": "1:1",
        "resolution": "480p",
        "width": 160,
        "height": 160,
        "duration": 1,
        "seed": 7,
    }
    fields.update(overrides)
    return GenerationJob(**fields)  # type: ignore[arg-type]


def make_image(
    fmt: str, colour: tuple[int, int, int], size: tuple[int, int], exif: Image.Exif | None = None
) -> InputImage:
    """A mostly `colour` picture with a few small marks, encoded as `fmt`."""
    picture = Image.new("RGB", size, colour)
    draw = ImageDraw.Draw(picture)
    w, h = size
    draw.rectangle((w // 10, h // 10, w // 10 + w // 12, h // 10 + h // 12), fill=(255, 255, 255))
    draw.ellipse((w - w // 5, h - h // 5, w - w // 10, h - h // 10), fill=(0, 0, 0))
    buffer = io.BytesIO()
    if exif is None:
        picture.save(buffer, fmt)
    else:
        picture.save(buffer, fmt, exif=exif)
    mime = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
    return InputImage(buffer.getvalue(), mime[fmt], w, h)


async def render(
    job: GenerationJob, workdir: Path, control: JobControl | None = None, **knobs: object
) -> Path:
    paths = await PreviewEngine(**knobs).generate(job, workdir, control or JobControl())  # type: ignore[arg-type]
    assert paths == [workdir / OUTPUT_NAME]
    return paths[0]


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def centre_colour(
    frame: NDArray[np.uint8], cy: float = 0.5, cx: float = 0.5
) -> NDArray[np.float64]:
    """Median RGB of a small block around (cy, cx), given as fractions of the frame."""
    h, w = frame.shape[:2]
    y, x = int(h * cy), int(w * cx)
    block = frame[max(0, y - 8) : y + 8, max(0, x - 8) : x + 8].reshape(-1, 3)
    median: NDArray[np.float64] = np.median(block, axis=0)
    return median


def assert_close(actual: NDArray[np.float64], expected: tuple[int, int, int], tol: int) -> None:
    diff = np.abs(actual - np.array(expected, dtype=np.float64))
    assert diff.max() <= tol, f"colour {actual.tolist()} is not close to {expected}"


def test_identity_and_capabilities() -> None:
    engine: Engine = PreviewEngine()  # mypy checks the protocol
    assert engine.name == "preview"
    caps = engine.capabilities
    assert caps == EngineCapabilities()
    assert caps.resolutions == {"480p", "720p"}
    assert (caps.max_images, caps.min_duration, caps.max_duration) == (7, 1, 15)


async def test_text_clip_is_h264_of_requested_size_and_length(tmp_path: Path) -> None:
    path = await render(make_job(duration=2), tmp_path)

    info = probe_mp4(path)
    assert (info.width, info.height) == (160, 160)
    assert info.codec == "h264"
    assert info.pix_fmt == "yuv420p"
    assert info.frames == 48
    assert info.fps == pytest.approx(24.0)
    assert info.duration_seconds == pytest.approx(2.0, abs=1 / 24)
    assert listing(tmp_path) == [OUTPUT_NAME]  # no temp file left


async def test_real_480p_clip_with_faststart(tmp_path: Path) -> None:
    job = make_job(ratio="16:9", width=848, height=480, duration=2, fps=24)
    path = await render(job, tmp_path)

    info = probe_mp4(path)
    assert (info.width, info.height, info.codec, info.pix_fmt) == (848, 480, "h264", "yuv420p")
    assert info.frames == 48
    assert info.duration_seconds == pytest.approx(2.0, abs=1 / 24)
    data = path.read_bytes()
    assert 0 <= data.find(b"moov") < data.find(b"mdat"), "index must precede the media data"


async def test_frame_count_follows_job_fps(tmp_path: Path) -> None:
    info = probe_mp4(await render(make_job(duration=2, fps=12), tmp_path))
    assert info.frames == 24
    assert info.fps == pytest.approx(12.0)
    assert info.duration_seconds == pytest.approx(2.0, abs=1 / 12)


@pytest.mark.parametrize("with_images", [False, True], ids=["text", "images"])
async def test_same_inputs_give_identical_bytes(tmp_path: Path, with_images: bool) -> None:
    images = (make_image("PNG", RED, (200, 120)), make_image("JPEG", BLUE, (120, 200)))
    job = make_job(images=images if with_images else ())
    first = await render(job, tmp_path / "a")
    second = await render(job, tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()


async def test_seed_changes_the_picture_and_the_picture_moves(tmp_path: Path) -> None:
    one = await render(make_job(seed=7), tmp_path / "one")
    other = await render(make_job(seed=8), tmp_path / "other")

    first = read_frame(one, 0).astype(np.int16)
    assert np.abs(first - read_frame(other, 0)).mean() > 5
    assert np.abs(first - read_frame(one, 23)).mean() > 2, "the animation should move"


async def test_mode_and_prompt_feed_the_seed(tmp_path: Path) -> None:
    base = read_frame(await render(make_job(mode="normal"), tmp_path / "a"), 0).astype(np.int16)
    fun = read_frame(await render(make_job(mode="fun"), tmp_path / "b"), 0)
    assert np.abs(base - fun).mean() > 5


async def test_images_are_shown_in_turn_with_their_colours(tmp_path: Path) -> None:
    images = (
        make_image("PNG", RED, (320, 240)),  # 4:3 in a square frame: contained
        make_image("JPEG", GREEN, (200, 200)),  # same shape: fills the frame
        make_image("WEBP", BLUE, (120, 300)),  # portrait
        make_image("GIF", YELLOW, (300, 150)),  # palette image
    )
    path = await render(make_job(duration=2, images=images), tmp_path)

    info = probe_mp4(path)
    assert (info.width, info.height, info.frames, info.codec) == (160, 160, 48, "h264")
    # 48 frames, 12 per image; check the middle of each image's turn.
    for index, colour in zip((0, 18, 30, 42), (RED, GREEN, BLUE, YELLOW), strict=True):
        assert_close(centre_colour(read_frame(path, index)), colour, tol=45)


async def test_exif_orientation_is_respected(tmp_path: Path) -> None:
    # Stored landscape: left half red, right half blue. Orientation 6 means
    # "rotate 90° clockwise to display", which puts red on top.
    picture = Image.new("RGB", (200, 100), BLUE)
    picture.paste(RED, (0, 0, 100, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", exif=exif, quality=95)
    image = InputImage(buffer.getvalue(), "image/jpeg", 200, 100)

    frame = read_frame(await render(make_job(images=(image,), prompt=""), tmp_path), 0)
    assert_close(centre_colour(frame, cy=0.3), RED, tol=45)
    assert_close(centre_colour(frame, cy=0.7), BLUE, tol=45)


@pytest.mark.parametrize(
    "data",
    [b"definitely not an image", make_image("PNG", RED, (64, 64)).data[:80]],
    ids=["garbage", "truncated-png"],
)
async def test_undecodable_image_fails_with_file_type(tmp_path: Path, data: bytes) -> None:
    images = (make_image("PNG", RED, (64, 64)), InputImage(data, "image/png", 64, 64))
    with pytest.raises(TaskFailure) as failure:
        await render(make_job(images=images), tmp_path)
    assert failure.value.reason is FailureReason.FILE_TYPE
    assert "image 2" in failure.value.detail
    assert listing(tmp_path) == []


async def test_progress_is_monotonic_and_ends_at_one(tmp_path: Path) -> None:
    seen: list[float] = []
    await render(make_job(duration=2), tmp_path, JobControl(on_progress=seen.append))
    assert len(seen) > 5
    assert seen == sorted(seen)
    assert seen[0] >= 0.0
    assert seen[-2] < 1.0
    assert seen[-1] == 1.0


async def test_cancel_event_stops_and_removes_partial_output(tmp_path: Path) -> None:
    control = JobControl()

    def on_progress(fraction: float) -> None:
        if fraction > 0.2:
            control.cancel_event.set()

    control.on_progress = on_progress
    with pytest.raises(Cancelled):
        await render(make_job(duration=3), tmp_path, control)
    assert listing(tmp_path) == []


async def test_cancel_before_start_writes_nothing(tmp_path: Path) -> None:
    control = JobControl()
    control.cancel_event.set()
    images = (make_image("PNG", RED, (64, 64)),)
    with pytest.raises(Cancelled):
        await render(make_job(images=images), tmp_path, control)
    assert listing(tmp_path) == []


async def test_cancelling_the_task_stops_the_render_thread(tmp_path: Path) -> None:
    started = threading.Event()
    control = JobControl(on_progress=lambda _fraction: started.set())
    job = make_job(ratio="16:9", width=848, height=480, duration=15)
    task = asyncio.create_task(PreviewEngine().generate(job, tmp_path, control))
    assert await asyncio.to_thread(started.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):  # the thread notices within a frame, then deletes its file
        if not listing(tmp_path):
            break
        await asyncio.sleep(0.05)
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    "prompt",
    [
        "",
        "word " * 400,
        "Supercalifragilisticexpialidocious" * 6,
        "猫がサーフィンをする 🐱🌊 — «quotes» and\nnewlines\tand tabs",
    ],
    ids=["empty", "very-long", "unbreakable", "unicode"],
)
async def test_any_prompt_renders(tmp_path: Path, prompt: str) -> None:
    info = probe_mp4(await render(make_job(prompt=prompt), tmp_path))
    assert (info.width, info.height, info.frames) == (160, 160, 24)


async def test_portrait_and_720p_sizes(tmp_path: Path) -> None:
    portrait = probe_mp4(await render(make_job(width=480, height=848), tmp_path / "p"))
    assert (portrait.width, portrait.height, portrait.frames) == (480, 848, 24)
    image = (make_image("JPEG", GREEN, (640, 480)),)
    hd = probe_mp4(await render(make_job(width=1280, height=720, images=image), tmp_path / "hd"))
    assert (hd.width, hd.height, hd.frames) == (1280, 720, 24)


def test_writer_round_trips_colour_and_tags(tmp_path: Path) -> None:
    path = tmp_path / "solid.mp4"
    frame = np.empty((64, 96, 3), dtype=np.uint8)
    frame[...] = RED
    with Mp4Writer(path, 96, 64, fps=10) as writer:
        for _ in range(10):
            writer.write_rgb(frame)
    info = probe_mp4(path)
    assert (info.width, info.height, info.frames, info.fps) == (96, 64, 10, 10.0)
    assert_close(centre_colour(read_frame(path, 5)), RED, tol=6)


def test_writer_deletes_file_on_error_and_rejects_odd_sizes(tmp_path: Path) -> None:
    path = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError, match="boom"), Mp4Writer(path, 32, 32) as writer:
        writer.write_rgb(np.zeros((32, 32, 3), dtype=np.uint8))
        raise RuntimeError("boom")
    assert not path.exists()
    with pytest.raises(ValueError):
        Mp4Writer(tmp_path / "odd.mp4", 33, 32)
    with pytest.raises(ValueError), Mp4Writer(tmp_path / "shape.mp4", 32, 32) as writer:
        writer.write_rgb(np.zeros((16, 32, 3), dtype=np.uint8))
    assert listing(tmp_path) == []
