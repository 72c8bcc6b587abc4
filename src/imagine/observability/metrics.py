"""The service's instruments, in one registry per process.

Each process (an API, an `imagine worker`) keeps its own counts and serves
them itself; Prometheus scrapes every process and sums. There is one server
process per API (no forked uvicorn workers), so prometheus-client's
multiprocess mode and its pitfalls (files per pid, lost `process_*`
metrics, slow scrapes) are not needed. What the database knows (queue
depth, oldest task, live workers, the webhook outbox) is read at scrape
time instead (`imagine.observability.exposition`): the same value from
every API process, to be aggregated with `max`, never `sum`.

Labels come only from closed sets: engine names, statuses, failure reasons,
route templates. Task, account and key ids go to logs and spans.

Counters are counted after the transaction that makes them true has
committed, never inside it.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from functools import wraps
from itertools import accumulate
from typing import ParamSpec, TypeVar

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from imagine import __version__
from imagine.failures import FailureReason

# No `*_created` series next to every counter: nothing here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

# OpenTelemetry's advice for http.server.request.duration.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
RUN_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
STORAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

BUILD_INFO = Gauge(
    "imagine_build_info", "Always 1; the version this process runs.", ["version"], registry=REGISTRY
)
BUILD_INFO.labels(__version__).set(1)


class RequestDurations:
    """A histogram for the one place that records on every request: the
    request layer, on the event loop's thread. prometheus-client's `Histogram`
    takes a lock for the sum and another for the bucket; these are a list of
    bucket counts and a sum per series, incremented in place (the scrape,
    from any thread, reads whatever they hold then)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.bounds = tuple(float(bound) for bound in buckets)
        self._les = [floatToGoString(bound) for bound in self.bounds]  # type: ignore[no-untyped-call]
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        registry.register(self)

    def observer(self, *labels: str) -> Callable[[float], None]:
        """The `observe(seconds)` of one series (its label values, in order)."""
        counts, total = self._series.setdefault(labels, ([0] * (len(self.bounds) + 1), [0.0]))
        bounds = self.bounds

        def observe(seconds: float) -> None:
            counts[bisect_left(bounds, seconds)] += 1  # the first bucket with le >= seconds
            total[0] += seconds

        return observe

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, (counts, total) in list(self._series.items()):
            cumulative = list(accumulate(counts))
            buckets = [*zip(self._les, cumulative, strict=False), ("+Inf", cumulative[-1])]
            family.add_metric(list(labels), buckets, total[0])
        yield family


HTTP_DURATION = RequestDurations(
    "http_server_request_duration_seconds",
    "Time to answer an HTTP request, by method, route template and status.",
    ["http_request_method", "http_route", "http_response_status_code"],
    HTTP_BUCKETS,
    REGISTRY,
)
TASKS_SUBMITTED = Counter(
    "imagine_tasks_submitted",
    "Generation requests that reached the submit, by outcome: accepted, replayed "
    "(same Idempotency-Key), invalid, no_credits, rate_limited, conflict.",
    ["engine", "outcome"],
    registry=REGISTRY,
)
TASKS_FINISHED = Counter(
    "imagine_tasks_finished",
    "Tasks that ended, by final status and, for failures, reason.",
    ["engine", "status", "reason"],
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "imagine_task_queue_wait_seconds",
    "Time from a task becoming claimable (submitted, or back in the queue) to a worker "
    "claiming it.",
    ["engine"],
    buckets=WAIT_BUCKETS,
    registry=REGISTRY,
)
RUN_DURATION = Histogram(
    "imagine_task_run_seconds",
    "Time of one attempt, from claim to its end, by how it ended: completed, failed, "
    "retried, cancelled, released (shutdown) or lost (lease taken over).",
    ["engine", "outcome"],
    buckets=RUN_BUCKETS,
    registry=REGISTRY,
)
STAGE_DURATION = Histogram(
    "imagine_engine_stage_seconds",
    "Time of one stage of an attempt: fetch_inputs, generate (the engine's whole call), "
    "encode (the part of generate spent writing the MP4, where the engine measures it), "
    "upload.",
    ["engine", "stage"],
    buckets=STAGE_BUCKETS,
    registry=REGISTRY,
)
LEASE_EXPIRED = Counter(
    "imagine_task_lease_expired",
    "Tasks whose worker stopped heart-beating, found by the reaper, by what it did: "
    "requeued (rescued), failed (last attempt), cancelled (a cancel was pending).",
    ["engine", "action"],
    registry=REGISTRY,
)
LEASE_LOST = Counter(
    "imagine_task_lease_lost",
    "Heartbeats that found the task taken over by another worker.",
    ["engine"],
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "imagine_webhook_deliveries",
    "Webhook delivery attempts by result: delivered, retrying, failed (given up).",
    ["result"],
    registry=REGISTRY,
)
CREDITS_DEBITED = Counter(
    "imagine_credits_debited",
    "Credits charged at submit.",
    ["engine"],
    registry=REGISTRY,
)
CREDITS_REFUNDED = Counter(
    "imagine_credits_refunded",
    "Credits given back when a task failed or was cancelled.",
    ["engine", "reason"],
    registry=REGISTRY,
)
RATE_LIMIT_DECISIONS = Counter(
    "imagine_ratelimit_decisions",
    "Rate-limit decisions on /v1 requests: allowed, limited, fail_open (store down, "
    "served anyway), unavailable (store down, 503).",
    ["decision"],
    registry=REGISTRY,
)
STORAGE_DURATION = Histogram(
    "imagine_storage_op_seconds",
    "Time of one storage operation, by backend, operation and result (ok, error).",
    ["backend", "op", "result"],
    buckets=STORAGE_BUCKETS,
    registry=REGISTRY,
)
GPU_MEMORY_PEAK = Gauge(
    "imagine_gpu_memory_peak_bytes",
    "GPU memory allocated at the peak of the latest generation (diffusers engine).",
    ["device"],
    registry=REGISTRY,
)
MODERATION_REFUSALS = Counter(
    "imagine_moderation_refusals",
    "Content refused by the moderation stage (recorded for review), by stage "
    "(input, output, engine) and check (words, text_classifier, image_hash, "
    "image_classifier, endpoint, engine).",
    ["stage", "check"],
    registry=REGISTRY,
)
GPU_OOM = Counter(
    "imagine_gpu_oom",
    "Generations that ran out of GPU memory (diffusers engine).",
    ["device"],
    registry=REGISTRY,
)

# --- closed label sets ----------------------------------------------------------------

REASONS: dict[FailureReason, str] = {
    FailureReason.FILE_TYPE: "file_type",
    FailureReason.INAPPROPRIATE: "moderation",
    FailureReason.BUILD_FAILED: "build_failed",
    FailureReason.NETWORK: "network",
}


def reason_label(reason: FailureReason | None) -> str:
    return "none" if reason is None else REASONS[reason]


# --- recording helpers ----------------------------------------------------------------


def task_ended(engine: str, status: str, reason: FailureReason | None, refunded: int) -> None:
    """A task reached its final status (committed), and what it gave back."""
    TASKS_FINISHED.labels(engine, status, reason_label(reason)).inc()
    if refunded:
        CREDITS_REFUNDED.labels(engine, status).inc(refunded)


MODERATION_STAGES = frozenset({"input", "output", "engine"})
MODERATION_CHECKS = frozenset(
    {"words", "text_classifier", "image_hash", "image_classifier", "endpoint", "engine"}
)


def content_refused(stage: str, check: str) -> None:
    """A refusal was recorded (its task failed with the contract's sentence)."""
    MODERATION_REFUSALS.labels(
        stage if stage in MODERATION_STAGES else "other",
        check if check in MODERATION_CHECKS else "other",
    ).inc()


P = ParamSpec("P")
R = TypeVar("R")


def storage_op(backend: str, op: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Time a (blocking) storage method into `imagine_storage_op_seconds`."""
    ok = STORAGE_DURATION.labels(backend, op, "ok")
    error = STORAGE_DURATION.labels(backend, op, "error")

    def decorate(method: Callable[P, R]) -> Callable[P, R]:
        @wraps(method)
        def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            try:
                result = method(*args, **kwargs)
            except BaseException:
                error.observe(time.perf_counter() - started)
                raise
            ok.observe(time.perf_counter() - started)
            return result

        return timed

    return decorate
