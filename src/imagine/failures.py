"""Why a task failed, in the only words the contract lets a client see.

The seed documents exactly four `error_message` sentences. Everything that can
fail a task (image fetching, engines, the queue) raises `TaskFailure` with one
of them; the detailed cause goes to the log, never to the client.
"""

from __future__ import annotations

import enum


class FailureReason(enum.StrEnum):
    FILE_TYPE = "File type not supported"
    INAPPROPRIATE = "Inappropriate content, please try another prompt."
    BUILD_FAILED = "grok imagine build failed"
    NETWORK = "Network error, please try again later."


# Failures a test key may force with `Imagine-Test-Outcome` (besides "completed").
TEST_OUTCOMES: dict[str, FailureReason] = {
    "moderation": FailureReason.INAPPROPRIATE,
    "network": FailureReason.NETWORK,
    "file-type": FailureReason.FILE_TYPE,
    "build-failed": FailureReason.BUILD_FAILED,
}


class TaskFailure(Exception):
    """A task cannot produce its video.

    `retryable` failures (a flaky network, say) may succeed on another
    attempt; the queue retries them while attempts remain. Others fail the
    task at once.
    """

    def __init__(self, reason: FailureReason, detail: str = "", *, retryable: bool = False):
        super().__init__(detail or reason.value)
        self.reason = reason
        self.detail = detail or reason.value
        self.retryable = retryable


class Cancelled(Exception):
    """Raised inside an engine when the job was told to stop (lease lost, shutdown)."""
