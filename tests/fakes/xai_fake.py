"""A local stand-in for xAI: its Video gRPC service and the CDN that serves results.

xAI's servers cannot be reached from tests, so this implements the real
protocol with the SDK's own generated code (`video_pb2_grpc.VideoServicer`,
`add_VideoServicer_to_server`) on a `grpc.aio` server on loopback, in a
thread with its own event loop. Each test scripts it: what `GenerateVideo`
does (succeed, or fail with a gRPC status), and the sequence of answers to
`GetDeferredVideo` (PENDING with progress, DONE with a URL or moderated,
FAILED with an error, EXPIRED, or a gRPC error). Every request is recorded.

Finished videos are served over plain HTTP on loopback: a real H.264 MP4
with an AAC audio track (like xAI's), plus paths that answer a given status
(`/status/410`), serve junk, or fail a few times before succeeding.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import av
import grpc
import numpy as np
from xai_sdk.proto import deferred_pb2, video_pb2, video_pb2_grpc

API_KEY = "xai-test-key-0123456789"
VIDEO_SECONDS = 1.0
VIDEO_SIZE = (64, 48)


@dataclass
class Step:
    """One scripted answer to `GetDeferredVideo`."""

    status: str = "PENDING"  # PENDING | DONE | FAILED | EXPIRED
    progress: int = 0
    url: str | None = None  # DONE: defaults to the fake's MP4; "" sends no URL
    respect_moderation: bool = True
    error: tuple[str, str] | None = None  # FAILED: (code, message)
    abort: tuple[grpc.StatusCode, str] | None = None  # answer with this gRPC error instead
    until: threading.Event | None = None  # repeat this step until the event is set


@dataclass
class Script:
    """How the fake behaves; the last poll step repeats forever."""

    start_errors: list[tuple[grpc.StatusCode, str]] = field(default_factory=list)
    polls: list[Step] = field(default_factory=lambda: [Step("DONE")])


def mp4_with_audio(seconds: float = VIDEO_SECONDS, size: tuple[int, int] = VIDEO_SIZE) -> bytes:
    """A small H.264 + AAC MP4, the shape of what xAI delivers."""
    fps, rate = 12, 44100
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=rate)
        audio.layout = "mono"
        for index in range(round(seconds * fps)):
            pixels = np.full((size[1], size[0], 3), (index * 20) % 256, np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        count = round(seconds * rate)
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(count) / rate)).astype(np.float32)
        for start in range(0, count, 1024):
            frame = av.AudioFrame.from_ndarray(
                tone[start : start + 1024].reshape(1, -1), format="fltp", layout="mono"
            )
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode(None):
            container.mux(packet)
    return buffer.getvalue()


class _Servicer(video_pb2_grpc.VideoServicer):  # type: ignore[misc]
    def __init__(self, fake: FakeXai) -> None:
        self.fake = fake

    async def GenerateVideo(self, request: Any, context: Any) -> Any:
        fake = self.fake
        fake.starts.append(request)
        fake.metadata.append(dict(context.invocation_metadata()))
        if fake.script.start_errors:
            code, details = fake.script.start_errors.pop(0)
            await context.abort(code, details)
        request_id = f"req-{next(fake.ids)}"
        fake.cursors[request_id] = 0
        return deferred_pb2.StartDeferredResponse(request_id=request_id)

    async def GetDeferredVideo(self, request: Any, context: Any) -> Any:
        fake = self.fake
        fake.polls.append(request.request_id)
        if request.request_id not in fake.cursors:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown request id")
        steps = fake.script.polls
        index = min(fake.cursors[request.request_id], len(steps) - 1)
        step = steps[index]
        if step.until is None or step.until.is_set():
            fake.cursors[request.request_id] = index + 1
        if step.abort is not None:
            await context.abort(*step.abort)
        return _answer(step, fake.video_url())


def _answer(step: Step, default_url: str) -> Any:
    status = getattr(deferred_pb2.DeferredStatus, step.status)
    response = video_pb2.VideoResponse(model="grok-imagine-video", progress=step.progress)
    if step.status == "DONE":
        url = default_url if step.url is None else step.url
        response.video.CopyFrom(
            video_pb2.GeneratedVideo(
                url=url, duration=1, respect_moderation=step.respect_moderation
            )
        )
    if step.error is not None:
        response.error.CopyFrom(video_pb2.VideoError(code=step.error[0], message=step.error[1]))
    return video_pb2.GetDeferredVideoResponse(status=status, response=response)


class _Files(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, video: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _FileHandler)
        self.video = video
        self.requests: list[str] = []
        self.flaky_left = 0


class _FileHandler(BaseHTTPRequestHandler):
    server: _Files

    def do_GET(self) -> None:
        files = self.server
        files.requests.append(self.path)
        if self.path.startswith("/status/"):
            self._send(int(self.path.rsplit("/", 1)[1]), b"gone", "text/plain")
        elif self.path == "/junk.mp4":
            self._send(200, b"this is not a video" * 50, "video/mp4")
        elif self.path == "/flaky.mp4" and files.flaky_left > 0:
            files.flaky_left -= 1
            self._send(503, b"busy", "text/plain")
        else:
            self._send(200, files.video, "video/mp4")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FakeXai:
    """The gRPC service and the file server, running until `stop()`."""

    def __init__(self, video: bytes, port: int = 0) -> None:
        self.script = Script()
        self.starts: list[Any] = []
        self.metadata: list[dict[str, Any]] = []
        self.polls: list[str] = []
        self.cursors: dict[str, int] = {}
        self.ids = itertools.count(1)
        self.files = _Files(video)
        threading.Thread(
            target=self.files.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.port = self._call(self._serve(port))

    @property
    def target(self) -> str:
        """The value for IMAGINE_XAI_API_HOST (with IMAGINE_XAI_INSECURE=true)."""
        return f"127.0.0.1:{self.port}"

    def video_url(self, name: str = "video.mp4") -> str:
        return f"http://127.0.0.1:{self.files.server_address[1]}/{name}"

    def stop(self) -> None:
        self._call(self._server.stop(grace=None))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
        self.files.shutdown()
        self.files.server_close()

    async def _serve(self, port: int) -> int:
        self._server = grpc.aio.server()
        video_pb2_grpc.add_VideoServicer_to_server(_Servicer(self), self._server)
        bound = int(self._server.add_insecure_port(f"127.0.0.1:{port}"))
        await self._server.start()
        return bound

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)


def running_fake(video: bytes, port: int = 0) -> Iterator[FakeXai]:
    """Generator for a pytest fixture: a started fake, stopped afterwards."""
    fake = FakeXai(video, port)
    try:
        yield fake
    finally:
        fake.stop()
