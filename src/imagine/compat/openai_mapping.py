"""OpenAI's videos API in our terms: its create fields as our request, our task
as its `Video`, our errors as its error object.

| OpenAI | ours |
|---|---|
| `prompt` | `prompt` (mode `normal`) |
| `model` | one of `OPENAI_MODELS` or the engine's name; runs on the caller's engine |
| `seconds` ("4") | `duration` (any whole number the engine serves; default 4) |
| `size` ("1280x720") | the `ratio` and `resolution` the engine renders at exactly that size |
| `input_reference` (file) | one `data:` entry of `images` |
| `queued`, `in_progress` | pending, processing |
| `completed`, `failed` | completed; failed and cancelled |

A size or a length we cannot render is refused, naming what we can, rather
than quietly changed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from imagine.api.envelope import validation_message
from imagine.compat.vocabulary import CANCELLED_CODE, CANCELLED_MESSAGE, check_model, failure_code
from imagine.db.prepared import Row
from imagine.engines.base import EngineCapabilities
from imagine.errors import ApiError, InvalidRequest
from imagine.sizes import FRAME_SIZES, RATIOS, RESOLUTIONS
from imagine.tasks.schemas import GenerateBody
from imagine.tasks.states import CANCELLED, COMPLETED, FAILED, PROCESSING

OPENAI_MODELS = (
    "sora-2",
    "sora-2-pro",
    "sora-2-2025-10-06",
    "sora-2-pro-2025-10-06",
    "sora-2-2025-12-08",
)
DEFAULT_MODEL = OPENAI_MODELS[0]
DEFAULT_SECONDS = 4
DEFAULT_SIZE = "720x1280"

_STATUSES = {PROCESSING: "in_progress", COMPLETED: "completed", FAILED: "failed"}


def sizes_served(capabilities: EngineCapabilities) -> dict[str, tuple[str, str]]:
    """`WxH` → (ratio, resolution), for every size this engine renders."""
    served: dict[str, tuple[str, str]] = {}
    for resolution in RESOLUTIONS:
        if resolution not in capabilities.resolutions:
            continue
        for ratio in RATIOS:
            width, height = _size(capabilities, ratio, resolution)
            if capabilities.sizes is None or (ratio, resolution) in capabilities.sizes:
                served.setdefault(f"{width}x{height}", (ratio, resolution))
    return served


def _size(capabilities: EngineCapabilities, ratio: str, resolution: str) -> tuple[int, int]:
    own = capabilities.sizes
    if own is not None and (ratio, resolution) in own:
        return own[(ratio, resolution)]
    return FRAME_SIZES[(ratio, resolution)]


def generate_body(
    fields: Mapping[str, Any], image: str | None, capabilities: EngineCapabilities, engine: str
) -> GenerateBody:
    """Our request for a `POST /videos`; `image` is the `input_reference` as a URL."""
    prompt = fields.get("prompt")
    if not isinstance(prompt, str):
        raise InvalidRequest("The prompt parameter is required")
    model = fields.get("model", DEFAULT_MODEL)
    check_model(model if isinstance(model, str) else "", OPENAI_MODELS, engine)
    ratio, resolution = _parse_size(fields.get("size", DEFAULT_SIZE), capabilities)
    request: dict[str, Any] = {
        "prompt": prompt,
        "ratio": ratio,
        "resolution": resolution,
        "duration": _parse_seconds(fields.get("seconds", DEFAULT_SECONDS), capabilities),
    }
    if image is not None:
        request["images"] = [image]
    try:
        return GenerateBody.model_validate(request)
    except ValidationError as exc:
        raise InvalidRequest(validation_message(RequestValidationError(exc.errors()))) from None


def _parse_size(value: object, capabilities: EngineCapabilities) -> tuple[str, str]:
    served = sizes_served(capabilities)
    if isinstance(value, str) and value in served:
        return served[value]
    raise InvalidRequest(f"The size parameter must be one of: {', '.join(served)}")


def _parse_seconds(value: object, capabilities: EngineCapabilities) -> int:
    low, high = capabilities.min_duration, capabilities.max_duration
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if text.isdecimal() and low <= int(text) <= high:
        return int(text)
    raise InvalidRequest(f"The seconds parameter must be a whole number from {low} to {high}")


def video_object(task: Row, capabilities: EngineCapabilities) -> dict[str, Any]:
    """A task as OpenAI's `Video`, every field present (the SDK reads any of them)."""
    request = task["request"]
    status = _STATUSES.get(task["status"], "queued")
    ended = task["status"] in (COMPLETED, FAILED, CANCELLED)
    error: dict[str, Any] | None = None
    if task["status"] == FAILED:
        message = task["error_message"] or ""
        error = {"code": failure_code(message), "message": message}
    elif task["status"] == CANCELLED:
        status, error = "failed", {"code": CANCELLED_CODE, "message": CANCELLED_MESSAGE}
    width, height = _size(capabilities, request["ratio"], request["resolution"])
    return {
        "id": task["id"],
        "object": "video",
        "created_at": int(task["created_at"].timestamp()),
        "completed_at": int(task["updated_at"].timestamp()) if ended else None,
        "expires_at": None,
        "status": status,
        "progress": 100 if task["status"] == COMPLETED else task["progress"],
        "model": task["engine"],
        "prompt": request["prompt"],
        "remixed_from_video_id": None,
        "seconds": str(request["duration"]),
        "size": f"{width}x{height}",
        "error": error,
    }


# Our error → OpenAI's status, `type` and `code`, and whether its SDK should retry.
_ERRORS: dict[str, tuple[int, str, str | None, bool]] = {
    "INVALID_REQUEST": (400, "invalid_request_error", None, False),
    "UNAUTHORIZED": (401, "invalid_request_error", "invalid_api_key", False),
    # OpenAI says an exhausted balance with 429 insufficient_quota, never worth a retry.
    "INSUFFICIENT_CREDITS": (429, "insufficient_quota", "insufficient_quota", False),
    "FORBIDDEN": (403, "invalid_request_error", "forbidden", False),
    "NOT_FOUND": (404, "invalid_request_error", "not_found", False),
    "METHOD_NOT_ALLOWED": (405, "invalid_request_error", "method_not_allowed", False),
    "IDEMPOTENCY_CONFLICT": (409, "invalid_request_error", "idempotency_conflict", False),
    "PAYLOAD_TOO_LARGE": (413, "invalid_request_error", "payload_too_large", False),
    "RATE_LIMITED": (429, "requests", "rate_limit_exceeded", True),
    "SERVICE_UNAVAILABLE": (503, "server_error", "service_unavailable", True),
}
_PARAMETER = re.compile(r"^(?:Invalid request: )?(?:The (\w+) (?:parameter|header)|(images)\[)")
# Our request's names for what OpenAI's request calls otherwise.
_OPENAI_NAMES = {"duration": "seconds", "images": "input_reference"}


def error_object(error: ApiError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """OpenAI's `{"error": {message, type, param, code}}`, its status and headers.
    Answers no retry can change carry `x-should-retry: false`, which the SDK obeys."""
    server_side = error.status >= 500
    status, kind, code, retry = _ERRORS.get(
        error.error,
        (
            error.status,
            "server_error" if server_side else "invalid_request_error",
            error.error.lower(),
            server_side,
        ),
    )
    found = _PARAMETER.match(error.message)
    param = next((name for name in found.groups() if name), None) if found else None
    body = {
        "error": {
            "message": error.message,
            "type": kind,
            "param": _OPENAI_NAMES.get(param, param) if param else None,
            "code": code,
        }
    }
    headers = dict(error.headers)
    if not retry:
        headers["x-should-retry"] = "false"
    return status, body, headers
