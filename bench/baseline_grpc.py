"""The gRPC ceiling: `grpc.aio` on uvloop (as in `imagine serve`) answering
`GetDeferredVideo` with a constant message, with the server options Imagine uses.

    python -m bench.baseline_grpc PORT
"""

from __future__ import annotations

import sys
from typing import Any

import grpc
import uvloop
from xai_sdk.proto import deferred_pb2, video_pb2, video_pb2_grpc

from imagine.compat.grpc_server import SERVER_OPTIONS

ANSWER = video_pb2.GetDeferredVideoResponse(
    status=deferred_pb2.DeferredStatus.PENDING,
    response=video_pb2.VideoResponse(model="preview", progress=0),
)


class Constant(video_pb2_grpc.VideoServicer):  # type: ignore[misc]
    async def GetDeferredVideo(self, request: Any, context: Any) -> Any:
        return ANSWER


async def serve(port: int) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    video_pb2_grpc.add_VideoServicer_to_server(Constant(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
