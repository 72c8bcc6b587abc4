"""Every way a Grok Imagine job can fail, mapped to the contract's four sentences.

xAI reports failures in several shapes: a gRPC status with free text (at the
start or at a poll), a `FAILED` deferred status with an `error{code, message}`,
`DONE` with `respect_moderation=false`, an `EXPIRED` request, and HTTP errors
when the finished video is downloaded. Moderation in particular has no clean
code, so rows match on status *and* text. All of it is decided here, in one
ordered table (first matching row wins), so the mapping can be read and tested
row by row. The upstream text goes into `TaskFailure.detail`, which is logged
and never shown to the client.

Only two rows are retryable, and both are failures where xAI provably did not
start a generation: the connection never opened, or xAI refused the start for
rate limiting. Everything else must not be retried by the queue, because a new
attempt sends a new `GenerateVideo`, which xAI bills again (it carries no
idempotency key).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from imagine.failures import FailureReason, TaskFailure

__all__ = [
    "FALLBACK",
    "RULES",
    "TRANSIENT_DOWNLOAD_CODES",
    "TRANSIENT_POLL_CODES",
    "Phase",
    "Rule",
    "Upstream",
    "classify",
    "find_rule",
]


class Phase(enum.StrEnum):
    """Where in a job the outcome was seen."""

    LOCAL = "local"  # checked here before anything is sent
    START = "start"  # GenerateVideo
    POLL = "poll"  # GetDeferredVideo raised a gRPC error
    RESULT = "result"  # GetDeferredVideo answered DONE / FAILED / EXPIRED
    DOWNLOAD = "download"  # fetching the finished MP4 from xAI's URL


# Outcome codes that are not gRPC status names.
FAILED = "FAILED"  # deferred status FAILED (text: error.code + error.message)
EXPIRED = "EXPIRED"  # deferred status EXPIRED
DONE_MODERATED = "DONE_MODERATED"  # DONE with respect_moderation=false
DONE_WITHOUT_URL = "DONE_WITHOUT_URL"  # DONE, moderation passed, but no video URL
TIME_LIMIT = "TIME_LIMIT"  # IMAGINE_XAI_TIMEOUT_SECONDS ran out
IMAGES_TOO_LARGE = "IMAGES_TOO_LARGE"  # inline images cannot fit one 20 MiB gRPC message
TOO_MANY_SECONDS = "TOO_MANY_SECONDS"  # reference images with a duration over xAI's cap
TRANSPORT = "TRANSPORT"  # download: connection/read error or timeout
UNDECODABLE = "UNDECODABLE"  # download: the file is not a playable MP4
TOO_BIG = "TOO_BIG"  # download: larger than the safety cap
CRASH = "CRASH"  # an unexpected exception in this engine


def http(status: int) -> str:
    """The outcome code of an HTTP answer while downloading."""
    return f"HTTP {status}"


# gRPC codes worth another poll: the request id stays valid, polling is free.
TRANSIENT_POLL_CODES = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "INTERNAL", "UNKNOWN", "ABORTED"}
)
# Download failures worth another try: fetching the finished video is free.
TRANSIENT_DOWNLOAD_CODES = frozenset(
    {TRANSPORT, http(408), http(429), *(http(n) for n in range(500, 600))}
)
# Start failures after which nobody knows whether xAI began (and bills) the job.
_START_UNKNOWN = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "ABORTED", "CANCELLED"}
)
_MODERATION = re.compile(
    r"moderat|content.?polic|usage.?polic|inappropriate|unsafe|nsfw|safety", re.IGNORECASE
)
_IMAGE = re.compile(r"image|picture|photo|file type|mime|unsupported format", re.IGNORECASE)
# gRPC's own words when no connection was ever made, so no request was sent.
_NEVER_SENT = re.compile(
    r"failed to connect to all addresses|errors resolving|dns resolution failed|"
    r"name resolution failure",
    re.IGNORECASE,
)
_ANY_PHASE = frozenset(Phase)


@dataclass(frozen=True)
class Upstream:
    """One outcome to classify: where, which status/code, and the upstream text."""

    phase: Phase
    code: str
    text: str = ""


@dataclass(frozen=True)
class Rule:
    """One row of the table; `pattern` (if any) must match the upstream text."""

    case: str
    phases: frozenset[Phase]
    codes: frozenset[str]
    reason: FailureReason
    retryable: bool = False
    pattern: re.Pattern[str] | None = None

    def matches(self, outcome: Upstream) -> bool:
        if outcome.phase not in self.phases or outcome.code not in self.codes:
            return False
        return self.pattern is None or bool(self.pattern.search(outcome.text))


def _rule(
    case: str,
    phases: set[Phase] | frozenset[Phase],
    codes: set[str] | frozenset[str],
    reason: FailureReason,
    *,
    retryable: bool = False,
    pattern: re.Pattern[str] | None = None,
) -> Rule:
    return Rule(case, frozenset(phases), frozenset(codes), reason, retryable, pattern)


_INAPPROPRIATE = FailureReason.INAPPROPRIATE
_FILE_TYPE = FailureReason.FILE_TYPE
_NETWORK = FailureReason.NETWORK
_BUILD = FailureReason.BUILD_FAILED

RULES: tuple[Rule, ...] = (
    # Moderation, in each of its three shapes (checked before the image rows:
    # "input image rejected by moderation" is about content, not file type).
    _rule(
        "moderation: INVALID_ARGUMENT with moderation text",
        {Phase.START, Phase.POLL},
        {"INVALID_ARGUMENT"},
        _INAPPROPRIATE,
        pattern=_MODERATION,
    ),
    _rule(
        "moderation: DONE with respect_moderation=false",
        {Phase.RESULT},
        {DONE_MODERATED},
        _INAPPROPRIATE,
    ),
    _rule(
        "moderation: FAILED with a moderation error",
        {Phase.RESULT},
        {FAILED},
        _INAPPROPRIATE,
        pattern=_MODERATION,
    ),
    # The input image.
    _rule(
        "image rejected: INVALID_ARGUMENT or FAILED about the image",
        {Phase.START, Phase.POLL, Phase.RESULT},
        {"INVALID_ARGUMENT", FAILED},
        _FILE_TYPE,
        pattern=_IMAGE,
    ),
    _rule(
        "images too large for one request (checked before sending)",
        {Phase.LOCAL},
        {IMAGES_TOO_LARGE},
        _FILE_TYPE,
    ),
    # Starting: retry only when xAI cannot have begun the job.
    _rule(
        "start never sent: no connection could be made",
        {Phase.START},
        {"UNAVAILABLE"},
        _NETWORK,
        retryable=True,
        pattern=_NEVER_SENT,
    ),
    _rule(
        "start refused by xAI's rate limit (nothing was started)",
        {Phase.START},
        {"RESOURCE_EXHAUSTED"},
        _NETWORK,
        retryable=True,
    ),
    _rule(
        "start outcome unknown (it may have reached xAI): not retried",
        {Phase.START},
        _START_UNKNOWN,
        _NETWORK,
    ),
    # Waiting and collecting.
    _rule(
        "polling kept failing after retries",
        {Phase.POLL},
        TRANSIENT_POLL_CODES,
        _NETWORK,
    ),
    _rule("request EXPIRED upstream", {Phase.RESULT}, {EXPIRED}, _NETWORK),
    _rule("time limit (IMAGINE_XAI_TIMEOUT_SECONDS)", _ANY_PHASE, {TIME_LIMIT}, _NETWORK),
    _rule(
        "video URL expired or gone (HTTP 403/404/410)",
        {Phase.DOWNLOAD},
        {http(403), http(404), http(410)},
        _NETWORK,
    ),
    _rule(
        "download kept failing after retries (5xx, 408, 429, connection, timeout)",
        {Phase.DOWNLOAD},
        TRANSIENT_DOWNLOAD_CODES,
        _NETWORK,
    ),
)

FALLBACK = _rule(
    "anything else (auth, NOT_FOUND, other FAILED, no URL, bad file, crash)",
    _ANY_PHASE,
    set(),
    _BUILD,
)


def find_rule(outcome: Upstream) -> Rule:
    """The first row that matches `outcome`, else `FALLBACK`."""
    for rule in RULES:
        if rule.matches(outcome):
            return rule
    return FALLBACK


def classify(outcome: Upstream, context: str = "") -> TaskFailure:
    """The `TaskFailure` for `outcome`; its detail (logged only) keeps the upstream text."""
    rule = find_rule(outcome)
    where = f" ({context})" if context else ""
    detail = f"xai {outcome.phase} {outcome.code}{where}: {outcome.text or '-'} -> {rule.case}"
    return TaskFailure(rule.reason, detail, retryable=rule.retryable)
