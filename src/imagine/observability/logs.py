"""Logs: one JSON object per line (or readable text on a terminal), with context.

Every record goes through one handler on the root logger, ours and
uvicorn's, SQLAlchemy's and httpx's alike. A line carries the time, level,
logger, event (the message), the fields bound to the current context (a
request's id and account, a task's id, engine and attempt) and the fields
its caller passed with `extra=fields(...)`.

The context lives in a `ContextVar`, so it follows a request or a task
through awaits, into the asyncio tasks it starts and the threads it hands
work to with `asyncio.to_thread`, and never leaks into another request.

Secrets never reach the output: whatever a line holds, API keys, webhook
secrets, bearer tokens and signature-like query parameters are replaced
before it is written. Callers should not log them in the first place; this
is the net under that rule. A cheap substring test first keeps the regular
expressions off the lines (nearly all) that cannot hold one.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import Any, Literal, TextIO

import orjson

LogFormat = Literal["json", "text"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar("imagine_log_context", default=_EMPTY)


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a record that carries fields of its own: `log.info("x", extra=fields(a=1))`."""
    return {"fields": values}


def bind(**values: Any) -> Token[Mapping[str, Any]]:
    """Add fields to every line logged from here on in this context."""
    return _context.set({**_context.get(), **values})


def start(**values: Any) -> Token[Mapping[str, Any]]:
    """A fresh context with only these fields (a request or task begins)."""
    return _context.set(values)


def reset(token: Token[Mapping[str, Any]]) -> None:
    _context.reset(token)


@contextlib.contextmanager
def bound(**values: Any) -> Iterator[None]:
    """These fields on every line logged inside the block."""
    token = bind(**values)
    try:
        yield
    finally:
        _context.reset(token)


def current() -> Mapping[str, Any]:
    return _context.get()


def request_id() -> str:
    """The current request's id (bound by `RequestTelemetry`), or a fresh one."""
    bound_id = _context.get().get("request_id")
    return bound_id if isinstance(bound_id, str) else secrets.token_hex(8)


# --- redaction ------------------------------------------------------------------------

_REDACTIONS = (
    # Our API keys (the listing form `imk_7Hq2…x9Lm` stays readable) and webhook secrets.
    (re.compile(r"imk_[0-9A-Za-z]{8,}"), "imk_[redacted]"),
    (re.compile(r"whsec_[0-9A-Za-z+/=]{8,}"), "whsec_[redacted]"),
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s\"'\\,;]+"), r"\1\2[redacted]"),
    # Header-like pairs in free text: `Authorization: …`, `'cookie': '…'`.
    (
        re.compile(
            r"(?i)\b(authorization|proxy-authorization|cookie|set-cookie|x-api-key)"
            r"(\\?[\"']?\s*[:=]\s*\\?[\"']?)(?!bearer\b|basic\b)[^\"'\\\n,}]+"
        ),
        r"\1\2[redacted]",
    ),
    # Signatures and credentials in query strings or assignments (presigned S3 and
    # GCS URLs, our signed file links, `token=…` and friends).
    (
        re.compile(
            r"(?i)(?<![0-9A-Za-z_-])((?:x-amz-signature|x-amz-credential|x-amz-security-token|"
            r"x-goog-signature|x-goog-credential|awsaccesskeyid|signature|sig|token|"
            r"access_token|secret|client_secret|password|api_key|apikey|key)=)[^&\s\"'\\]+"
        ),
        r"\1[redacted]",
    ),
)


def _may_hold_secret(text: str) -> bool:
    """What every pattern above needs (an `=`, a prefix, a header's name): a chain
    of substring tests, a few hundred nanoseconds for a line."""
    if "=" in text or "imk_" in text or "whsec_" in text:
        return True
    lowered = text.lower()
    return (
        "bearer" in lowered
        or "basic" in lowered
        or "authorization" in lowered
        or "cookie" in lowered
        or "api-key" in lowered
    )


def redact(text: str) -> str:
    """`text` with every secret-looking value replaced by `[redacted]`."""
    if not _may_hold_secret(text):
        return text
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


# --- formatting -----------------------------------------------------------------------

_second_cache: tuple[int, str] = (-1, "")
_milli_cache: tuple[int, str] = (-1, "")


def _timestamp(created: float) -> str:
    """ISO 8601 UTC to the millisecond; built once per millisecond (lines come
    several to a millisecond under load), its date part once per second."""
    global _second_cache, _milli_cache
    milli = int(created * 1000)
    if _milli_cache[0] == milli:
        return _milli_cache[1]
    second = milli // 1000
    cached = _second_cache
    if cached[0] != second:
        cached = _second_cache = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    stamp = f"{cached[1]}.{milli - second * 1000:03d}Z"
    _milli_cache = (milli, stamp)
    return stamp


_LEVELS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}


def json_line(
    created: float,
    level: int,
    logger: str,
    event: str,
    extra: Mapping[str, Any] | None = None,
    exception: str | None = None,
) -> str:
    """One line: `{"time", "level", "logger", "event", …context, …extra, "exception"?}`."""
    entry: dict[str, Any] = {
        "time": _timestamp(created),
        "level": _LEVELS.get(level) or logging.getLevelName(level).lower(),
        "logger": logger,
        "event": event,
        **_context.get(),
        **(extra or _EMPTY),
    }
    if exception:
        entry["exception"] = exception
    return redact(orjson.dumps(entry, default=str).decode())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        exception = record.exc_text
        if record.exc_info:
            exception = self.formatException(record.exc_info)
        return json_line(
            record.created,
            record.levelno,
            record.name,
            record.getMessage(),
            record.__dict__.get("fields"),
            exception,
        )


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: event key=value …` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = {**_context.get(), **(record.__dict__.get("fields") or {})}
        if extra:
            pairs = " ".join(f"{name}={value}" for name, value in extra.items())
            head, newline, rest = line.partition("\n")  # keep a traceback below the line
            line = f"{head} {pairs}{newline}{rest}"
        return redact(line)


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Lines to a stream, written in batches: a system call per line cost more
    than everything else of an access line. A line at WARNING or above is
    written at once, with everything before it; the others within
    `FLUSH_SECONDS` (a thread flushes), when `BATCH_BYTES` have gathered, and
    at exit (`logging.shutdown`). What a SIGKILL takes with it is at most
    that fraction of a second of INFO lines."""

    FLUSH_SECONDS = 0.2
    BATCH_BYTES = 32 * 1024

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._flusher = threading.Thread(target=self._flush_often, name="log-flush", daemon=True)
        self._flusher.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(self.format(record), urgent=record.levelno >= logging.WARNING)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def write(self, line: str, *, urgent: bool = False) -> None:
        """Queue one line (the caller holds the handler's lock)."""
        self._pending.append(line)
        self._pending_bytes += len(line)
        if urgent or self._pending_bytes >= self.BATCH_BYTES:
            self._write_pending()

    def _write_pending(self) -> None:
        if self._pending:
            lines, self._pending, self._pending_bytes = self._pending, [], 0
            self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()

    def _flush_often(self) -> None:
        while True:
            time.sleep(self.FLUSH_SECONDS)
            if self._pending:
                try:
                    self.flush()
                except Exception:  # a closed stream at exit
                    return


_json_handler: LineHandler | None = None


def log_fields(logger: logging.Logger, level: int, event: str, values: dict[str, Any]) -> None:
    """`logger.log(level, event, extra=fields(**values))`, the same line, for what is
    logged on every request: with this process's JSON handler (`configure`) and
    nothing else attached, the line goes straight to it, without a `LogRecord`
    and the handler chain (they cost more than the line itself)."""
    if not logger.isEnabledFor(level):
        return
    handler = _json_handler
    handlers = logging.root.handlers
    if handler is None or len(handlers) != 1 or handlers[0] is not handler or logger.handlers:
        logger.log(level, event, extra={"fields": values})
        return
    try:
        line = json_line(time.time(), level, logger.name, event, values)
        with handler.lock:  # type: ignore[union-attr]
            handler.write(line, urgent=level >= logging.WARNING)
    except Exception:
        logger.log(level, event, extra={"fields": values})


def flush() -> None:
    """Write out every line still batched (before the process ends abruptly)."""
    for handler in logging.root.handlers:
        handler.flush()


def resolve_format(wanted: str, stream: TextIO) -> LogFormat:
    if wanted in ("json", "text"):
        return wanted  # type: ignore[return-value]
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def configure(level: str, wanted: str = "auto", stream: TextIO | None = None) -> LogFormat:
    """Send every record of this process through one handler in the chosen format."""
    out = stream or sys.stderr
    chosen = resolve_format(wanted, out)
    global _json_handler
    handler = LineHandler(out)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    _json_handler = handler if chosen == "json" else None
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # What no line shows, not computed for each record (the logging HOWTO's
    # "Optimization": no caller frame lookup, thread or process names).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.captureWarnings(True)  # Python's warnings become lines like any other
    # httpx logs every request it sends at INFO, query string included.
    logging.getLogger("httpx").setLevel(max(root.level, logging.WARNING))
    return chosen
