"""xAI's gRPC `Video` service for `xai-sdk` clients, on the servicer classes the
SDK's package generates (`video_pb2_grpc.VideoServicer`).

Every call is admitted as an HTTP request is (`Admission`: the bearer key from
the `authorization` metadata, the account's per-minute window) and answers
with the limit as trailing metadata (`x-ratelimit-*`). Our errors become the
status codes xAI uses (`STATUS_CODES`).

`UNAVAILABLE` is never answered once a task may exist: the SDK retries it (up
to five attempts) and `GenerateVideo` carries no idempotency key, so each
retry would be charged again. The only `UNAVAILABLE` is the rate-limit
store being down, before anything is submitted. A retry the client makes
anyway (the connection dropped after the task was made) is recognised by the
`grpc-previous-rpc-attempts` metadata gRPC adds to retries: see `Starts`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import grpc
from xai_sdk.proto import deferred_pb2, video_pb2, video_pb2_grpc

from imagine.accounts.service import Principal
from imagine.api.gate import Admission, Admitted
from imagine.api.services import Services
from imagine.compat import xai_mapping
from imagine.compat.xai_mapping import DONE, EXPIRED, FAILED_STATUS, XaiRequest
from imagine.errors import ApiError, InvalidRequest
from imagine.tasks import service
from imagine.tasks.actions import checked_test_outcome, submit_generation

log = logging.getLogger("imagine.compat")

STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    402: grpc.StatusCode.RESOURCE_EXHAUSTED,  # credits
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,  # rate limit, stored inputs
    503: grpc.StatusCode.UNAVAILABLE,  # only at admission, before any task
}
"""Our error's HTTP status → the gRPC status; anything else is `INTERNAL`, and so
is a 503 once the caller was admitted."""

_RATIOS = {
    getattr(video_pb2.VideoAspectRatio, f"VIDEO_ASPECT_RATIO_{name}"): name.replace("_", ":")
    for name in ("1_1", "16_9", "9_16", "4_3", "3_4", "3_2", "2_3")
}
_RESOLUTIONS = {
    video_pb2.VideoResolution.VIDEO_RESOLUTION_480P: "480p",
    video_pb2.VideoResolution.VIDEO_RESOLUTION_720P: "720p",
    video_pb2.VideoResolution.VIDEO_RESOLUTION_1080P: "1080p",
}
_DEFERRED = {
    xai_mapping.PENDING: deferred_pb2.DeferredStatus.PENDING,
    DONE: deferred_pb2.DeferredStatus.DONE,
    FAILED_STATUS: deferred_pb2.DeferredStatus.FAILED,
    EXPIRED: deferred_pb2.DeferredStatus.EXPIRED,
}
# Fields of `GenerateVideoRequest` no engine here can honour: refused by name.
_UNSUPPORTED = (
    ("video", "video editing"),
    ("last_frame", "a pinned last frame"),
    ("keyframes", "keyframes"),
    ("reference_audios", "reference audio"),
    ("storage_options", "storing results in xAI's Files API"),
)
_REPEATED = frozenset({"keyframes", "reference_audios"})
TEST_OUTCOME_METADATA = "imagine-test-outcome"
RETRY_METADATA = "grpc-previous-rpc-attempts"


def xai_request(message: Any) -> XaiRequest:
    """A `GenerateVideoRequest` in the terms `xai_mapping` takes."""
    for field, what in _UNSUPPORTED:
        value = getattr(message, field)
        present = len(value) > 0 if field in _REPEATED else message.HasField(field)
        if present:
            raise InvalidRequest(f"The {field} parameter is not supported: {what} is not available")
    aspect_ratio = resolution = None
    if message.HasField("aspect_ratio") and message.aspect_ratio:
        aspect_ratio = _enum(_RATIOS, message.aspect_ratio, "aspect_ratio")
    if message.HasField("resolution") and message.resolution:
        resolution = _enum(_RESOLUTIONS, message.resolution, "resolution")
    return XaiRequest(
        prompt=message.prompt,
        model=message.model or None,
        duration=message.duration if message.HasField("duration") else None,
        aspect_ratio=aspect_ratio,
        resolution=resolution,
        image_url=_image_url(message.image, "image") if message.HasField("image") else None,
        reference_image_urls=[
            _image_url(image, f"reference_images[{index}]")
            for index, image in enumerate(message.reference_images)
        ],
    )


def _enum(names: dict[int, str], value: int, field: str) -> str:
    if value not in names:
        raise InvalidRequest(f"The {field} parameter has an unknown value {value}")
    return names[value]


def _image_url(content: Any, field: str) -> str:
    """An `ImageUrlContent`'s URL (https or data:); a Files API id names nothing here."""
    if content.WhichOneof("source") != "image_url":
        raise InvalidRequest(
            f"The {field} parameter must be an image_url: file ids are not supported"
        )
    return str(content.image_url)


Submit = Callable[[str, timedelta], Awaitable[str]]


class Starts:
    """`GenerateVideo` calls, each charged once even when gRPC retries it.

    A first attempt always makes a new task, under an idempotency key derived
    from the account and the request's bytes (`replay_window=0`: a later,
    deliberate, identical request is a new task and takes the key over). A
    retry (`grpc-previous-rpc-attempts` ≥ 1) uses the same key with a window
    of `RETRY_WINDOW`, so it answers with the task its first attempt made; if
    that attempt is still running in this process, the retry waits for it.
    The submit is shielded from the call's cancellation: a dropped connection
    never leaves a half-made task that a retry could not find.
    """

    RETRY_WINDOW = timedelta(minutes=2)
    """Far more than the SDK's five attempts take (backoff 0.1 s to 1 s)."""

    def __init__(self) -> None:
        self._running: dict[tuple[str, str], asyncio.Future[str]] = {}

    async def start(
        self, account_id: str, request_bytes: bytes, retry: bool, submit: Submit
    ) -> str:
        fingerprint = hashlib.sha256(request_bytes).hexdigest()
        slot = (account_id, fingerprint)
        running = self._running.get(slot) if retry else None
        if running is None:
            window = self.RETRY_WINDOW if retry else timedelta(0)
            running = asyncio.ensure_future(submit(f"xai-grpc:{fingerprint}", window))
            self._running[slot] = running
            running.add_done_callback(lambda done: self._finished(slot, done))
        return await asyncio.shield(running)

    def _finished(self, slot: tuple[str, str], done: asyncio.Future[str]) -> None:
        if self._running.get(slot) is done:
            del self._running[slot]
        if not done.cancelled():
            done.exception()  # retrieved: a caller that went away does not leave it unseen


class VideoService(video_pb2_grpc.VideoServicer):  # type: ignore[misc]
    """`xai_api.Video`: `GenerateVideo`, `GetDeferredVideo`; `ExtendVideo` answers
    `UNIMPLEMENTED`. File URLs are built on `base_url` (`IMAGINE_PUBLIC_URL`,
    else the HTTP server's own address): a gRPC call has no HTTP request to
    take a base from."""

    def __init__(self, svc: Services, admission: Admission, base_url: str) -> None:
        self.svc = svc
        self.admission = admission
        self.base_url = base_url
        self.starts = Starts()

    async def GenerateVideo(self, request: Any, context: Any) -> Any:
        return await self._answer(context, self._generate, request)

    async def GetDeferredVideo(self, request: Any, context: Any) -> Any:
        return await self._answer(context, self._deferred, request)

    async def ExtendVideo(self, request: Any, context: Any) -> Any:
        return await self._answer(context, self._extend, request)

    async def _generate(self, request: Any, caller: Principal, metadata: dict[str, str]) -> Any:
        svc = self.svc
        body = xai_mapping.generate_body(xai_request(request), svc.engine_for(caller).name)
        outcome = checked_test_outcome(metadata.get(TEST_OUTCOME_METADATA), caller)

        def submit(key: str, window: timedelta) -> Awaitable[str]:
            return submit_generation(
                svc, caller, body, idempotency_key=key, test_outcome=outcome, replay_window=window
            )

        task_id = await self.starts.start(
            caller.account_id,
            request.SerializeToString(deterministic=True),
            retry=metadata.get(RETRY_METADATA, "0") != "0",
            submit=submit,
        )
        return deferred_pb2.StartDeferredResponse(request_id=task_id)

    async def _deferred(self, request: Any, caller: Principal, _metadata: dict[str, str]) -> Any:
        svc = self.svc
        task = await service.get_task(svc.db, caller, request.request_id)
        found = xai_mapping.deferred(task, lambda key: svc.storage.url(key, self.base_url))
        response = video_pb2.VideoResponse(model=found.model, progress=found.progress)
        if found.url is not None:
            response.video.CopyFrom(
                video_pb2.GeneratedVideo(
                    url=found.url, duration=found.duration, respect_moderation=True
                )
            )
        if found.error is not None:
            response.error.CopyFrom(
                video_pb2.VideoError(code=found.error[0], message=found.error[1])
            )
        return video_pb2.GetDeferredVideoResponse(status=_DEFERRED[found.status], response=response)

    async def _extend(self, _request: Any, _caller: Principal, _metadata: dict[str, str]) -> Any:
        raise _Unimplemented()

    async def _answer(
        self,
        context: Any,
        work: Callable[[Any, Principal, dict[str, str]], Awaitable[Any]],
        request: Any,
    ) -> Any:
        """Admit the caller, run `work`, and turn whatever went wrong into a status."""
        metadata = {str(key): str(value) for key, value in context.invocation_metadata()}
        admitted: Admitted | None = None
        try:
            admitted = await self.admission.admit(metadata.get("authorization", ""))
            answer = await work(request, admitted.principal, metadata)
        except ApiError as error:
            code, details = STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL), error.message
            if admitted is not None and code == grpc.StatusCode.UNAVAILABLE:
                code = grpc.StatusCode.INTERNAL  # past admission a task may exist: no retry
            headers = {**(admitted.headers if admitted else {}), **error.headers}
        except _Unimplemented:
            code, headers = grpc.StatusCode.UNIMPLEMENTED, admitted.headers if admitted else {}
            details = "ExtendVideo is not supported: no engine on this server can extend a video"
        except Exception as exc:
            request_id = secrets.token_hex(8)
            log.error("unhandled error (request %s) in gRPC Video", request_id, exc_info=exc)
            code, headers = grpc.StatusCode.INTERNAL, admitted.headers if admitted else {}
            details = f"Internal server error (request id {request_id})"
        else:
            context.set_trailing_metadata(_metadata(admitted.headers))
            return answer
        context.set_trailing_metadata(_metadata(headers))
        await context.abort(code, details)


class _Unimplemented(Exception):
    """An RPC of the service that this server does not offer."""


def _metadata(headers: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple((name.lower(), value) for name, value in headers.items())
