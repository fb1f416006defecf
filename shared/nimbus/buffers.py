"""Writes buffered off the request path, and who writes them: a thread on a server, the invocation on Lambda.

A serving process keeps a few counts in memory and writes them to Redis in one round trip
now and then: the A/B exposures (:class:`nimbus.experiments.exposures.ExposureTracker`),
the traffic rollup (:class:`nimbus.monitoring.traffic.Rollup`) and the drift samples
(:class:`nimbus.monitoring.samples.SampleBuffer`: the recommender's and predict's samplers). Each registers here.

* **On a server** (uvicorn, a container) each starts its own daemon thread
  (:func:`start_flusher`) that flushes every second or so: the request path only appends.
* **On Lambda** (``AWS_LAMBDA_FUNCTION_NAME`` set) the runtime freezes every thread between
  invocations and may recycle the container without warning, so a thread would write late
  or never. There no flush thread is started at all; instead the handler wrapper
  (:func:`flushed`, used by :func:`nimbus.api.common.lambda_handler`) calls
  :func:`flush_all` in the invoking thread before the handler returns, also when it raised.
  ``nimbus invoke`` and the local gateway call handlers through the same wrapper, so they
  write before returning too (a thread may exist there as well; it finds nothing left).

This module imports nothing heavy: it is on every function's import path.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

log = logging.getLogger("nimbus.buffers")

F = TypeVar("F", bound=Callable[..., Any])
# The names of the flush threads, one per kind of buffer (a test looks for them).
FLUSH_THREADS = ("exposure-tracker", "traffic-rollup", "feature-sampler", "prediction-sampler", "rollout-counts",
                 "served-traffic")


class Buffer(Protocol):
    def flush(self) -> int:
        """Write what is buffered now; returns how much went (never raises for a store outage)."""


_buffers: weakref.WeakSet[Any] = weakref.WeakSet()  # a dropped app's buffers go with it
_lock = threading.Lock()


def on_lambda() -> bool:
    """Whether this process is a Lambda execution environment (the runtime sets the variable)."""
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))


def register(buffer: Buffer) -> None:
    with _lock:
        _buffers.add(buffer)


def start_flusher(loop: Callable[[], None], name: str) -> threading.Thread | None:
    """Run ``loop`` in a daemon thread named ``name`` — except on Lambda, where it returns None
    and the invocation flushes instead (:func:`flushed`)."""
    if on_lambda():
        return None
    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread


def flush_all() -> int:
    """Flush every registered buffer of this process in the calling thread; returns how much went."""
    with _lock:
        buffers = list(_buffers)
    written = 0
    for buffer in buffers:
        try:
            # Exposures flush in batches: drain all of them (a flush returns 0 when nothing is left).
            while (n := buffer.flush()) > 0:
                written += n
        except Exception as exc:  # noqa: BLE001 - a monitoring write never fails the invocation
            log.warning("flushing %s failed: %s", type(buffer).__name__, exc)
    return written


def flushed(handler: F) -> F:
    """A Lambda handler that writes every buffered count before it returns (also when it raised)."""

    @functools.wraps(handler)
    def invoke(event: Any, context: Any) -> Any:
        try:
            return handler(event, context)
        finally:
            flush_all()

    invoke.flushes = True  # type: ignore[attr-defined] # what the layout test looks for
    return invoke  # type: ignore[return-value]
