"""The gRPC server of the xAI face, run by the API process's lifespan.

It is a `grpc.aio` server in the same event loop as uvicorn, started when the
app starts and stopped before the workers and the database: one process, one
loop, the same `Services` and `Admission` as the HTTP routes (so the key
cache and rate-limit windows are shared), and nothing to run or supervise
beside `imagine serve`. Its own port, because gRPC needs HTTP/2 and uvicorn
serves HTTP/1.1.

Options follow what `xai-sdk`'s channels send (docs/compat.md): messages up to
20 MiB (`data:` images inline), and keepalive pings every 30 s even while
idle, which gRPC's server defaults answer with `GOAWAY too_many_pings`.
"""

from __future__ import annotations

import logging

import grpc
from xai_sdk.proto import video_pb2_grpc

from imagine.api.gate import Admission
from imagine.api.services import Services
from imagine.compat.xai_grpc import VideoService

log = logging.getLogger("imagine.compat")

MAX_MESSAGE_BYTES = 20 * 1024 * 1024
"""What the SDK sends and accepts at most."""

SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # The SDK pings every 30 s even with no call in flight (permit_without_calls=1);
    # the default server refuses any such ping and, after two, closes the
    # connection. Pings up to once a second are welcome; faster ones still count
    # as abuse (two strikes, then GOAWAY).
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
]

SHUTDOWN_GRACE_SECONDS = 5.0
"""In-flight calls are short (a submit, a read); this lets them answer."""


class GrpcStartError(RuntimeError):
    """The gRPC port could not be bound (in use, or not allowed)."""


class GrpcFace:
    """The server, from `start()` to `stop()`."""

    def __init__(self, svc: Services, admission: Admission) -> None:
        settings = svc.settings
        self.address = f"{_bracketed(settings.host)}:{settings.grpc_port}"
        self.servicer = VideoService(svc, admission, settings.public_url or settings.local_url)
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        server = grpc.aio.server(options=SERVER_OPTIONS)
        video_pb2_grpc.add_VideoServicer_to_server(self.servicer, server)
        try:
            self.port = int(server.add_insecure_port(self.address))
        except RuntimeError as exc:
            raise GrpcStartError(f"cannot serve gRPC on {self.address}: {exc}") from None
        if not self.port:  # older grpcio reports a failed bind as port 0
            raise GrpcStartError(f"cannot serve gRPC on {self.address}")
        await server.start()
        self._server = server
        log.info("xAI-compatible gRPC on %s", self.address)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=SHUTDOWN_GRACE_SECONDS)
            self._server = None


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
