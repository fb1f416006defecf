"""Traffic of the HTTP functions: requests, errors, degraded answers and latency.

One call per request (:meth:`FunctionTraffic.record`, made by the ASGI middleware that
``api.common.create_app`` installs and by the recommend fast path) feeds two views:

* **Prometheus** (``GET /metrics`` and ``GET /{function}/metrics`` on every app):
  ``nimbus_http_requests_total{function,route,method,status}``,
  ``nimbus_http_request_errors_total{function,route}`` (5xx and unhandled exceptions),
  ``nimbus_http_request_duration_seconds{function,route}`` (histogram) and
  ``nimbus_degraded_answers_total{function}``. These live in the process's registry, so
  each uvicorn worker or Lambda container exposes its own counts — Prometheus sums them
  when it scrapes every worker, but a Lambda fleet cannot be scraped.
* **A cross-process rollup in Redis**, for the dashboard: per function and time bucket
  (``traffic_bucket_s``, 10 s) the request, error and degraded counts and a latency
  histogram over the fixed :data:`LATENCY_BUCKETS_MS`. The request path only adds to a
  dict under an uncontended lock; a background thread adds the dict to Redis with
  HINCRBY every ``traffic_flush_s`` (one round trip), so Redis never sits on the request
  path. (On Lambda there is no thread: the handler wrapper writes the counts before the
  invocation returns, see :mod:`nimbus.buffers`.)

Contract (the dashboard reads it)::

    summary(settings, window_s=900, bucket_s=10) -> {
        "window_s": 900, "bucket_s": 10, "generated_at": 1764140000.0,
        "functions": {name: {"requests", "errors", "degraded", "p50_ms", "p95_ms", "p99_ms", "rps"}},
        "series": [{"t", "function", "requests", "errors", "degraded", "p50_ms", "p95_ms", "p99_ms"}],
    }

``t`` is the bucket start (epoch seconds); percentiles are ``None`` where a bucket saw no
request. Percentiles come from the histogram, interpolated linearly inside the bucket
that holds the rank (as Prometheus's ``histogram_quantile``), so they are exact to within
the width of that bucket.

**Per served model** the ``predict`` function keeps the same rollup per model name
(:class:`ModelRollup`, its own flush thread, Redis ``mon:served:<model>:<bucket>``): every request
a model answered, or failed on (an error), timed from the body read to the answer serialised;
requests refused before a model answers (404, 409, 422) are not the model's traffic. The reader::

    model_summary(settings, window_s=900, bucket_s=10) -> {
        "window_s", "bucket_s", "generated_at",
        "models": {name: {"requests", "errors", "degraded", "p50_ms", "p95_ms", "p99_ms", "rps"}},
        "series": [{"t", "model", "requests", "errors", "degraded", "p50_ms", "p95_ms", "p99_ms"}],
    }
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from typing import Any

from prometheus_client import Counter, Histogram

from nimbus import buffers
from nimbus.config import Settings
from nimbus.errors import InvalidInput, StoreUnavailable
from nimbus.monitoring.windows import check_window
from nimbus.stores.redis.telemetry import FUNCTIONS, MODELS, TelemetryStore

log = logging.getLogger("nimbus.monitoring.traffic")

# Upper bounds (ms) of the latency histogram; a last bucket takes everything above.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000,
    10000,
)
# Hash fields of one rollup bucket: counts, then one field per latency bucket.
REQUESTS, ERRORS, DEGRADED = "n", "err", "deg"
HIST_FIELDS = tuple(f"h{i}" for i in range(len(LATENCY_BUCKETS_MS) + 1))
_FIELDS = (REQUESTS, ERRORS, DEGRADED, *HIST_FIELDS)
_H0 = 3  # index of the first histogram field in a pending row

REQUESTS_TOTAL = Counter("nimbus_http_requests", "HTTP requests answered.", ["function", "route", "method", "status"])
ERRORS_TOTAL = Counter("nimbus_http_request_errors", "HTTP requests answered 5xx or failed.", ["function", "route"])
LATENCY = Histogram("nimbus_http_request_duration_seconds", "Time from request to the end of the answer.",
                    ["function", "route"], buckets=tuple(b / 1000 for b in LATENCY_BUCKETS_MS))
DEGRADED_TOTAL = Counter("nimbus_degraded_answers", "Answers served from a fallback (e.g. Redis unreachable).",
                         ["function"])


class HistogramRows:
    """Pending counts per key — requests, errors, degraded, one latency histogram — taken whole by a flush.

    The request path adds under an uncontended lock; :meth:`take` swaps the dict out and gives the
    non-zero fields by name (``REQUESTS``, ``ERRORS``, ``DEGRADED``, ``HIST_FIELDS``), what the stores
    HINCRBY. Shared by the traffic rollup (per function and time bucket) and the rollouts' counts
    (per rollout step and role, :mod:`nimbus.serving.rollout`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Any, list[int]] = {}

    def _row(self, key: Any) -> list[int]:
        """The pending row of ``key`` (the caller holds the lock)."""
        row = self._pending.get(key)
        if row is None:
            row = self._pending[key] = [0] * len(_FIELDS)
        return row

    def add(self, key: Any, latency_ms: float, error: bool) -> None:
        slot = _H0 + bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)
        with self._lock:
            row = self._row(key)
            row[0] += 1
            row[1] += error
            row[slot] += 1

    def add_degraded(self, key: Any) -> None:
        with self._lock:
            self._row(key)[2] += 1

    def take(self) -> dict[Any, dict[str, int]]:
        with self._lock:
            pending, self._pending = self._pending, {}
        return {key: {name: value for name, value in zip(_FIELDS, row) if value} for key, row in pending.items()}


class Rollup:
    """This process's not-yet-flushed traffic counts, added to Redis by a background thread."""

    thread_name = "traffic-rollup"
    of = FUNCTIONS  # what the counts are kept per (the store's layout)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket_s = settings.traffic_bucket_s
        self._rows = HistogramRows()
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # one flush at a time: a flush returns once its counts are in
        self._thread: threading.Thread | None = None
        self._started = False
        self._stop = threading.Event()
        buffers.register(self)

    def add(self, function: str, latency_ms: float, error: bool) -> None:
        self._rows.add((function, int(time.time()) // self.bucket_s * self.bucket_s), latency_ms, error)
        if not self._started:
            self._start()

    def add_degraded(self, function: str) -> None:
        self._rows.add_degraded((function, int(time.time()) // self.bucket_s * self.bucket_s))

    def _start(self) -> None:
        with self._lock:
            if not self._started:
                self._started = True
                self._thread = buffers.start_flusher(self._loop, self.thread_name)  # None on Lambda

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.traffic_flush_s):
            self.flush()

    def flush(self) -> int:
        """Add the pending counts to Redis now; returns how many (function, bucket) rows went."""
        with self._flushing:
            counts = self._rows.take()
            if not counts:
                return 0
            try:
                self.write(counts)
            except StoreUnavailable as exc:  # monitoring never fails a request; the counts are lost
                log.warning("%s dropped %d rows: %s", self.thread_name, len(counts), exc)
                return 0
            return len(counts)

    def write(self, counts: dict[Any, dict[str, int]]) -> None:
        TelemetryStore.for_settings(self.settings).add_traffic(counts, self.settings.traffic_ttl_s, self.of)

    def stop(self) -> None:
        self._stop.set()


class ModelRollup(Rollup):
    """The same counts per served model (``add(model, latency_ms, error)``), for the dashboard's models."""

    thread_name = "served-traffic"
    of = MODELS


_rollups: dict[tuple[type[Rollup], str], Rollup] = {}
_rollups_lock = threading.Lock()


def rollup_for(settings: Settings, kind: type[Rollup] = Rollup) -> Rollup:
    """The process's rollup of this kind for this Redis (one flush thread per process, kind and Redis)."""
    rollup = _rollups.get((kind, settings.redis_url))
    if rollup is None:
        with _rollups_lock:
            rollup = _rollups.setdefault((kind, settings.redis_url), kind(settings))
    return rollup


def flush_all() -> None:
    """Flush every rollup of this process now (before a process ends, or before its Redis is emptied)."""
    for rollup in list(_rollups.values()):
        rollup.flush()


class FunctionTraffic:
    """What one HTTP function records per request; the Prometheus children are cached so a
    request costs two dict lookups, three increments and one locked dict update."""

    def __init__(self, function: str, settings: Settings) -> None:
        self.function = function
        self.rollup = rollup_for(settings)
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}
        self._degraded = DEGRADED_TOTAL.labels(function)

    def record(self, route: str, method: str, status: int, seconds: float) -> None:
        children = self._children.get((route, method, status))
        if children is None:
            children = self._children[(route, method, status)] = (
                REQUESTS_TOTAL.labels(self.function, route, method, str(status)),
                LATENCY.labels(self.function, route), ERRORS_TOTAL.labels(self.function, route))
        count, latency, errors = children
        count.inc()
        latency.observe(seconds)
        error = status >= 500
        if error:
            errors.inc()
        self.rollup.add(self.function, seconds * 1000.0, error)

    def count_degraded(self, served: Any) -> None:
        """A recommender listener: counts answers flagged ``degraded``."""
        if served.degraded:
            self._degraded.inc()
            self.rollup.add_degraded(self.function)


# ---- reading the rollup ----------------------------------------------------------------------
def percentile(hist: list[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a latency histogram over LATENCY_BUCKETS_MS, in ms."""
    total = sum(hist)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(hist):
        if count and seen + count >= rank:
            if i == len(LATENCY_BUCKETS_MS):  # the open-ended bucket: its lower bound is all we know
                return float(LATENCY_BUCKETS_MS[-1])
            lower = LATENCY_BUCKETS_MS[i - 1] if i else 0.0
            return lower + (LATENCY_BUCKETS_MS[i] - lower) * max(0.0, rank - seen) / count
        seen += count
    return float(LATENCY_BUCKETS_MS[-1])


def stats(rows: list[dict[str, int]]) -> dict[str, Any]:
    """Requests, errors, degraded answers and latency percentiles (ms) of stored count rows, summed."""
    hist = [sum(r.get(f, 0) for r in rows) for f in HIST_FIELDS]
    return {
        "requests": sum(r.get(REQUESTS, 0) for r in rows), "errors": sum(r.get(ERRORS, 0) for r in rows),
        "degraded": sum(r.get(DEGRADED, 0) for r in rows),
        "p50_ms": percentile(hist, 0.50), "p95_ms": percentile(hist, 0.95), "p99_ms": percentile(hist, 0.99),
    }


def summary(settings: Settings, window_s: int = 900, bucket_s: int = 10) -> dict[str, Any]:
    """Traffic of every function over the last ``window_s`` seconds (see the module docstring)."""
    return _summary(settings, window_s, bucket_s, FUNCTIONS, "function")


def model_summary(settings: Settings, window_s: int = 900, bucket_s: int = 10) -> dict[str, Any]:
    """Traffic of every model ``predict`` served over the last ``window_s`` seconds (the module docstring)."""
    return _summary(settings, window_s, bucket_s, MODELS, "model")


def _summary(settings: Settings, window_s: int, bucket_s: int, of: str, label: str) -> dict[str, Any]:
    base = settings.traffic_bucket_s
    if bucket_s < base or bucket_s % base:
        raise InvalidInput(f"bucket_s must be a multiple of the rollup's {base} s bucket; got {bucket_s}")
    if window_s < bucket_s:
        raise InvalidInput(f"window_s must be at least bucket_s ({bucket_s}); got {window_s}")
    check_window("traffic_window_s", window_s, bucket_s, base)
    now = time.time()
    last = int(now) // bucket_s * bucket_s
    first = last - (math.ceil(window_s / bucket_s) - 1) * bucket_s
    store = TelemetryStore.for_settings(settings)
    functions = store.traffic_functions(of)
    rows = store.traffic(functions, range(first // base * base, last + bucket_s, base), of)
    series, totals = [], {}
    grouped: dict[tuple[str, int], list[dict[str, int]]] = {}  # (function, series bucket) -> stored rows
    for (function, b), row in rows.items():
        grouped.setdefault((function, first + (b - first) // bucket_s * bucket_s), []).append(row)
    for function in functions:
        mine = [row for (f, _), row in rows.items() if f == function]
        for t in range(first, last + 1, bucket_s):
            series.append({"t": t, label: function, **stats(grouped.get((function, t), []))})
        totals[function] = {**stats(mine), "rps": 0.0}
        totals[function]["rps"] = totals[function]["requests"] / window_s
    return {"window_s": window_s, "bucket_s": bucket_s, "generated_at": now, of: totals,
            "series": sorted(series, key=lambda s: (s["t"], s[label]))}
