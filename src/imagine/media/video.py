"""Write and inspect H.264 MP4 files with PyAV.

Every engine hands the worker plain MP4 files that a browser can play while
downloading, so the writer always uses H.264 (libx264), yuv420p,
``movflags=+faststart`` and BT.709 colour tags. It also passes
``x264-params mbtree=0``: with x264's default macroblock-tree rate control the
same frames can encode to different bytes from run to run (see
``shared/notes/video-encoding.md``), and tests rely on repeatable output.

Frames are numpy ``uint8`` arrays, either RGB ``(height, width, 3)`` or
yuv420p planes stacked as ``(height * 3 // 2, width)`` (PyAV's own layout);
`to_yuv420p` and `yuv420p_planes` convert and slice the latter.
"""

from __future__ import annotations

import contextlib
import io
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from numpy.typing import NDArray
from PIL import Image

__all__ = [
    "DEFAULT_CRF",
    "DEFAULT_FPS",
    "DEFAULT_PRESET",
    "X264_PARAMS",
    "Mp4Writer",
    "VideoInfo",
    "VideoWriteError",
    "probe_mp4",
    "read_frame",
    "sample_frames",
    "to_yuv420p",
    "yuv420p_planes",
]

DEFAULT_FPS = 24
DEFAULT_PRESET = "veryfast"
DEFAULT_CRF = 23
X264_PARAMS = "mbtree=0"
"""mbtree off makes libx264 repeatable: same frames in, same bytes out."""

# H.264 VUI / swscale code for BT.709 (matrix, primaries and transfer) and
# for limited ("MPEG", 16–235) range. Tagging matters: untagged HD video is
# assumed to be BT.709 by browsers, SD video BT.601, so tag what we convert to.
_BT709 = 1
_LIMITED_RANGE = 1
_COLORSPACE = "ITU709"
_RANGE = "MPEG"

Frame = NDArray[np.uint8]

_local = threading.local()


class VideoWriteError(RuntimeError):
    """The encoder or muxer failed; the partial file has been removed."""


@dataclass(frozen=True)
class VideoInfo:
    """What a decoded MP4 really contains (from `probe_mp4`)."""

    width: int
    height: int
    duration_seconds: float
    codec: str
    frames: int
    fps: float
    pix_fmt: str


def to_yuv420p(rgb: Frame, width: int | None = None, height: int | None = None) -> Frame:
    """Convert an RGB array to stacked yuv420p planes, scaling it on the way.

    Uses swscale (bilinear), which does the resize and the colour conversion
    in one SIMD pass; much cheaper than resizing with Pillow and converting
    afterwards. The input may be a strided view (a crop of a larger array).
    `width`/`height` default to the input size and must be even.
    """
    out_w = rgb.shape[1] if width is None else width
    out_h = rgb.shape[0] if height is None else height
    _check_even(out_w, out_h)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    yuv = _reformatter().reformat(
        frame,
        width=out_w,
        height=out_h,
        format="yuv420p",
        dst_colorspace=_COLORSPACE,
        dst_color_range=_RANGE,
        interpolation="BILINEAR",
    )
    return np.asarray(yuv.to_ndarray(), dtype=np.uint8)


def _reformatter() -> Any:
    """This thread's swscale wrapper: reusing it keeps its cached context
    (about 0.4 ms a frame saved when crops change size), and a reformatter
    must not be shared between threads."""
    cached = getattr(_local, "reformatter", None)
    if cached is None:
        cached = _local.reformatter = VideoReformatter()
    return cached


def yuv420p_planes(yuv: Frame, width: int, height: int) -> tuple[Frame, Frame, Frame]:
    """Views of the Y (h×w), U and V (h/2×w/2) planes inside a stacked array.

    Writing to the views writes to `yuv`, which must be C-contiguous.
    """
    flat = yuv.reshape(-1)
    luma = width * height
    chroma = luma // 4
    y = flat[:luma].reshape(height, width)
    u = flat[luma : luma + chroma].reshape(height // 2, width // 2)
    v = flat[luma + chroma : luma + 2 * chroma].reshape(height // 2, width // 2)
    return y, u, v


class Mp4Writer:
    """Encode frames one by one into an H.264 MP4 file.

    Use as a context manager: a clean exit finalises the file (the
    ``faststart`` pass moves the index to the front), an exception deletes it.
    """

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        fps: int = DEFAULT_FPS,
        *,
        preset: str = DEFAULT_PRESET,
        crf: int = DEFAULT_CRF,
        threads: int = 0,
    ) -> None:
        _check_even(width, height)
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.width = width
        self.height = height
        self.fps = fps
        self.frames_written = 0
        self._time_base = Fraction(1, fps)
        self._closed = False
        try:
            self._container: Any = av.open(
                str(self.path), mode="w", format="mp4", options={"movflags": "+faststart"}
            )
        except av.error.FFmpegError as exc:
            raise VideoWriteError(f"cannot create {self.path.name}: {exc}") from exc
        try:
            stream = self._container.add_stream(
                "libx264",
                rate=fps,
                options={"preset": preset, "crf": str(crf), "x264-params": X264_PARAMS},
            )
            stream.width = width
            stream.height = height
            stream.pix_fmt = "yuv420p"
            ctx = stream.codec_context
            ctx.thread_count = threads
            ctx.colorspace = _BT709
            ctx.color_primaries = _BT709
            ctx.color_trc = _BT709
            ctx.color_range = _LIMITED_RANGE
            self._stream: Any = stream
        except Exception as exc:
            self.abort()
            raise VideoWriteError(f"cannot set up libx264: {exc}") from exc

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write_rgb(self, rgb: Frame) -> None:
        """Encode one RGB frame of exactly the writer's size."""
        self._expect_shape(rgb, (self.height, self.width, 3))
        self.write_yuv420p(to_yuv420p(rgb))

    def write_yuv420p(self, yuv: Frame) -> None:
        """Encode one frame given as stacked yuv420p planes (no conversion)."""
        self._expect_shape(yuv, (self.height * 3 // 2, self.width))
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        self._encode(frame)

    def close(self) -> None:
        """Flush the encoder and finalise the file; on failure delete it."""
        if self._closed:
            return
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
        except Exception as exc:
            self.abort()
            raise VideoWriteError(f"cannot finalise {self.path.name}: {exc}") from exc
        self._closed = True

    def abort(self) -> None:
        """Stop without finishing and delete whatever was written."""
        if not self._closed:
            self._closed = True
            # The file is deleted next; a half-written trailer is moot.
            with contextlib.suppress(Exception):
                self._container.close()
        self.path.unlink(missing_ok=True)

    def _encode(self, frame: Any) -> None:
        if self._closed:
            raise VideoWriteError("writer is closed")
        frame.pts = self.frames_written
        frame.time_base = self._time_base
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except Exception as exc:
            self.abort()
            raise VideoWriteError(f"encoding frame {self.frames_written} failed: {exc}") from exc
        self.frames_written += 1

    @staticmethod
    def _expect_shape(array: Frame, shape: tuple[int, ...]) -> None:
        if array.shape != shape or array.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 frame of shape {shape}, got {array.dtype} {array.shape}"
            )


def probe_mp4(path: Path) -> VideoInfo:
    """Decode every frame of `path` and report what it really holds.

    Counting decoded frames (rather than trusting the header) is what makes
    this useful for checking an engine's output. Raises `av.error.FFmpegError`
    for an unreadable file and `ValueError` when it has no video stream.
    """
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = 0
        pix_fmt = ""
        for frame in container.decode(stream):
            frames += 1
            pix_fmt = str(frame.format.name)
        ctx = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = frames / fps if fps else 0.0
        return VideoInfo(
            width=int(ctx.width),
            height=int(ctx.height),
            duration_seconds=duration,
            codec=str(ctx.name),
            frames=frames,
            fps=fps,
            pix_fmt=pix_fmt or str(ctx.pix_fmt),
        )


def read_frame(path: Path, index: int = 0) -> Frame:
    """Decode frame number `index` of `path` as an RGB array (for checks, thumbnails)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for number, frame in enumerate(container.decode(stream)):
            if number == index:
                return np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)
    raise IndexError(f"{path} has no frame {index}")


def sample_frames(path: Path, count: int) -> list[Frame]:
    """About `count` RGB frames spread evenly over `path`: the first, the last,
    and the first decoded at or after each even step between.

    Decodes in one pass, skipping frames no other frame refers to (H.264's
    non-reference B-frames, about half of an engine's clip): a sample lands
    at most a frame or two from the even step. Seeking would not help, since
    an engine's short clips have one keyframe or few.
    """
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.skip_frame = "NONREF"
        if stream.duration is not None and stream.time_base is not None:
            length = float(stream.duration * stream.time_base)
        else:
            length = (container.duration or 0) / av.time_base
        steps = [length * i / (count - 1) for i in range(count)] if count > 1 else [0.0]
        during = max(count - 1, 1)  # the last sample is the last frame, known at the end
        frames: list[Frame] = []
        last: Any = None
        for number, frame in enumerate(container.decode(stream)):
            last = frame
            at = frame.time if frame.time is not None else number / float(stream.average_rate or 24)
            if len(frames) < during and at >= steps[len(frames)]:
                frames.append(np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8))
                if len(frames) == count:
                    break
        if last is not None and len(frames) < count:
            frames.append(np.asarray(last.to_ndarray(format="rgb24"), dtype=np.uint8))
        return frames


def first_frame_jpeg(mp4: bytes, quality: int = 85) -> bytes:
    """The first frame of an MP4 as a JPEG: a video's thumbnail, made when asked
    for (one frame decoded) rather than stored beside every video."""
    with av.open(io.BytesIO(mp4), mode="r") as container:
        stream = container.streams.video[0]
        frame = next(container.decode(stream), None)
        if frame is None:
            raise ValueError("the video has no frames")
        picture = Image.fromarray(np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8))
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _check_even(width: int, height: int) -> None:
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"yuv420p needs a positive, even size, got {width}x{height}")
