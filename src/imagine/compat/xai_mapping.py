"""xAI's video request and deferred result, in our terms; shared by the gRPC and
REST faces, and free of the SDK, so both speak one mapping.

| xAI | ours |
|---|---|
| `prompt` | `prompt` (mode `normal`) |
| `model` | one of `XAI_MODELS` or the engine's name; runs on the caller's engine |
| `duration` | `duration`; absent: ours (6 s), not xAI's 8 |
| `aspect_ratio` | `ratio` (the same seven strings); absent: 16:9 |
| `resolution` | `resolution`; absent: 480p; the engine decides which it serves |
| `image` (`image_url`) | one entry of `images` (the first frame) |
| `reference_images` | `images` (several: a cross-fade on preview, references on xai) |

Fields we cannot honour are refused by name, never dropped quietly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from imagine.api.envelope import validation_message
from imagine.compat.vocabulary import check_model, failure_code
from imagine.db.prepared import Row
from imagine.errors import InvalidRequest
from imagine.tasks.schemas import GenerateBody
from imagine.tasks.states import CANCELLED, COMPLETED, FAILED

XAI_MODELS = ("grok-imagine-video", "grok-imagine-video-1.5")
DEFAULT_MODEL = XAI_MODELS[0]

# Our statuses → xAI's deferred statuses. A cancelled task will never have a
# video, which is what xAI says of an expired request.
PENDING, DONE, FAILED_STATUS, EXPIRED = "pending", "done", "failed", "expired"
_STATUSES = {COMPLETED: DONE, FAILED: FAILED_STATUS, CANCELLED: EXPIRED}


@dataclass(frozen=True)
class XaiRequest:
    """A `GenerateVideoRequest` (or REST body) with enums already as strings."""

    prompt: str
    model: str | None = None
    duration: int | None = None
    aspect_ratio: str | None = None
    resolution: str | None = None
    image_url: str | None = None
    reference_image_urls: Sequence[str] = ()


def generate_body(request: XaiRequest, engine: str) -> GenerateBody:
    """Our request for xAI's, with our rules' sentences for what is wrong."""
    check_model(request.model or DEFAULT_MODEL, XAI_MODELS, engine)
    if request.image_url is not None and request.reference_image_urls:
        raise InvalidRequest(
            "The image and reference_images parameters cannot be combined: "
            "send one image to animate, or reference images"
        )
    fields: dict[str, Any] = {"prompt": request.prompt}
    if request.duration is not None:
        fields["duration"] = request.duration
    if request.aspect_ratio is not None:
        fields["ratio"] = request.aspect_ratio
    if request.resolution is not None:
        fields["resolution"] = request.resolution
    if request.image_url is not None:
        fields["images"] = [request.image_url]
    elif request.reference_image_urls:
        fields["images"] = list(request.reference_image_urls)
    try:
        return GenerateBody.model_validate(fields)
    except ValidationError as exc:
        raise InvalidRequest(validation_message(RequestValidationError(exc.errors()))) from None


@dataclass(frozen=True)
class Deferred:
    """A task as xAI's `GetDeferredVideo` (or `GET /v1/videos/{id}`) shows it."""

    status: str
    progress: int
    model: str
    url: str | None = None
    duration: int = 0
    error: tuple[str, str] | None = None
    """(code, message) of a failed task; the message is the contract's sentence."""


def deferred(task: Row, file_url: Callable[[str], str]) -> Deferred:
    status = _STATUSES.get(task["status"], PENDING)
    model = str(task["engine"])
    if status == DONE:
        return Deferred(
            status,
            100,
            model,
            url=file_url(task["outputs"][0]),
            duration=int(task["request"]["duration"]),
        )
    if status == FAILED_STATUS:
        message = str(task["error_message"] or "")
        return Deferred(status, task["progress"], model, error=(failure_code(message), message))
    return Deferred(status, task["progress"], model)
