"""Words every face translates the same way: model names and why a task failed."""

from __future__ import annotations

from collections.abc import Collection

from imagine.errors import InvalidRequest
from imagine.failures import FailureReason

FAILURE_CODES: dict[str, str] = {
    FailureReason.FILE_TYPE.value: "unsupported_file_type",
    FailureReason.INAPPROPRIATE.value: "moderation_blocked",
    FailureReason.BUILD_FAILED.value: "internal_error",
    FailureReason.NETWORK.value: "network_error",
}
"""A failed task's sentence (the contract's `error_message`) → the machine-readable
`code` the foreign error objects carry beside it."""

CANCELLED_CODE = "cancelled"
CANCELLED_MESSAGE = "The task was cancelled and refunded"


def failure_code(message: str | None) -> str:
    return FAILURE_CODES.get(message or "", "internal_error")


def check_model(name: str, accepted: Collection[str], engine: str) -> None:
    """Every model name a face accepts runs on the caller's engine (the server's
    engine; the preview engine for test keys), as does the engine's own name. Any
    other name is refused rather than quietly served by something else."""
    if name in accepted or name == engine:
        return
    names = ", ".join([*accepted, engine])
    raise InvalidRequest(f"The model parameter must be one of: {names}")
