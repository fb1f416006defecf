"""Served rows kept for drift, buffered in memory and written to Redis off the request path.

One :class:`SampleBuffer` per sampler (the recommender's ``FeatureSampler``, predict's
``PredictionSampler``): the request path appends a row (``keep``); a flush — a thread once a
second on a server, the invocation on Lambda (:mod:`nimbus.buffers`) — writes every model's rows
in one pipelined round trip to ``mon:samples:{model}`` (capped) and names the models in the set of
sampled models, which the drift check reads to know what to check.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping
from typing import Any

import orjson

from nimbus import buffers
from nimbus.errors import StoreUnavailable
from nimbus.stores.redis.live import LiveModelStore

log = logging.getLogger("nimbus.monitoring.samples")


class SampleBuffer:
    """Rows per model waiting for the next flush (``keep`` only appends to a queue)."""

    def __init__(self, store: LiveModelStore, thread: str, flush_s: float = 1.0) -> None:
        self.store, self.flush_s = store, flush_s
        self._queue: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self._stop = threading.Event()
        buffers.register(self)
        buffers.start_flusher(self._flush_loop, thread)  # none on Lambda: the invocation flushes

    def keep(self, model: str, row: Mapping[str, Any]) -> None:
        self._queue.put((model, orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY)))

    def stop(self) -> None:
        self._stop.set()

    def drain(self, limit: int = 1000) -> dict[str, list[bytes]]:
        """Take what is kept (at most ``limit`` rows): model -> its JSON rows, oldest first."""
        rows: dict[str, list[bytes]] = {}
        for _ in range(limit):
            try:
                model, row = self._queue.get_nowait()
            except queue.Empty:
                break
            rows.setdefault(model, []).append(row)
        return rows

    def flush(self, limit: int = 1000) -> int:
        """Write what is kept (at most ``limit`` rows, one round trip); returns how many were written."""
        rows = self.drain(limit)
        if not rows:
            return 0
        try:
            self.store.push_samples_of(rows)
        except StoreUnavailable as exc:
            log.debug("drift samples dropped: %s", exc)
            return 0
        return sum(len(batch) for batch in rows.values())

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()
