"""The serving side of experiments: which variant a user gets, and what was served.

:class:`RunningExperiments` keeps this process in step with the running experiments in
Redis (``ab:running``, announced on pub/sub, polled as a backstop) and is the
recommender's ``assigner``: user id -> (experiment, variant, model alias), a pure hash
(see :mod:`nimbus.experiments.assignment`) — no I/O on the request path.

:class:`ExposureTracker` is a recommender listener. On the request path it only puts a
tuple on an in-process queue (well under a microsecond — see
benchmarks/exposure_overhead.py); a background thread writes the batch to Redis every
``exposure_flush_s`` in one round trip (on Lambda no thread: the invocation writes it before
it returns, see :mod:`nimbus.buffers`): the answer's record (for joining clicks and
purchases), the variant's exposure count and user set, the performance time bucket
(counts per model version and variant, served-item sketch, diversity). A Redis failure
drops that batch and is logged — it never touches a request.

This module is on the recommend function's import path: nothing heavy (no pymongo,
no scipy) is imported here.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from nimbus import buffers
from nimbus.config import Settings
from nimbus.errors import StoreUnavailable
from nimbus.experiments.assignment import assign
from nimbus.recommend.serving import Served
from nimbus.stores.redis.experiments import ExperimentStore
from nimbus.stores.redis.keys import EXPERIMENTS_TOPIC, ServedRow
from nimbus.stores.redis.watcher import Watcher

log = logging.getLogger("nimbus.experiments")

SURFACE = "recommendations"
CACHE_USERS = 200_000


@dataclass(frozen=True)
class Compiled:
    """A running experiment reduced to what assignment needs."""

    id: str
    seed: str
    names: tuple[str, ...]
    aliases: tuple[str, ...]
    ranges: tuple[tuple[float, float], ...]
    cache: dict[str, int] = field(default_factory=dict, compare=False)  # user -> variant index


def intra_list_diversity(categories: Sequence[str]) -> float | None:
    """Share of item pairs in one list whose categories differ (0: one category, 1: all
    different); None for lists under two items."""
    n = len(categories)
    if n < 2:
        return None
    same = sum(c * (c - 1) for c in Counter(categories).values()) / 2
    return 1.0 - same / (n * (n - 1) / 2)


class RunningExperiments:
    """The running experiment of one surface, as this process sees it; callable as an assigner."""

    def __init__(self, store: ExperimentStore, surface: str = SURFACE, poll_s: float = 2.0) -> None:
        self.store, self.surface, self.poll_s = store, surface, poll_s
        self.current: Compiled | None = None
        self._watcher = Watcher(store, (EXPERIMENTS_TOPIC,), self.refresh, poll_s, name="experiments")

    def __call__(self, user_id: str) -> tuple[str, str, str] | None:
        exp = self.current
        if exp is None:
            return None
        i = exp.cache.get(user_id)
        if i is None:  # the pure-Python hash costs a few microseconds; a repeat visitor, a dict lookup
            if len(exp.cache) >= CACHE_USERS:
                exp.cache.clear()
            i = exp.cache[user_id] = assign(exp.seed, user_id, exp.ranges)
        return None if i < 0 else (exp.id, exp.names[i], exp.aliases[i])

    def refresh(self) -> None:
        try:
            doc = self.store.running_experiments().get(self.surface)
        except StoreUnavailable as exc:
            log.debug("running experiments unreadable, keeping what we have: %s", exc)
            return
        if doc is None:
            self.current = None
        elif self.current is None or self.current.id != doc["id"]:
            variants = doc["variants"]
            self.current = Compiled(doc["id"], doc["seed"], tuple(v["name"] for v in variants),
                                    tuple(v["alias"] for v in variants),
                                    tuple(tuple(r) for r in doc["ranges"]))
            log.info("experiment %s running on %s", doc["id"], self.surface)

    def start(self) -> None:
        self._watcher.start()

    def stop(self) -> None:
        self._watcher.stop()


class ExposureTracker:
    """A recommender listener: every answer, buffered, written to Redis in the background."""

    def __init__(self, store: ExperimentStore, settings: Settings, background: bool = True) -> None:
        self.store, self.settings = store, settings
        self._queue: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._stop = threading.Event()
        self.dropped = 0
        buffers.register(self)
        if background:
            buffers.start_flusher(self._loop, "exposure-tracker")  # none on Lambda

    def __call__(self, served: Served) -> None:
        self._queue.put((served.request_id, served.user_id, served.experiment, served.variant,
                         served.model_version, served.items, served.categories, served.ts))

    def stop(self) -> None:
        self._stop.set()
        self.flush()

    def flush(self, limit: int = 5_000) -> int:
        """Write what is buffered (at most ``limit`` answers); returns how many were written."""
        rows = []
        while len(rows) < limit:
            try:
                rid, user, exp, variant, version, items, cats, ts = self._queue.get_nowait()
            except queue.Empty:
                break
            rows.append(ServedRow(rid, user, exp, variant, version, tuple(items), ts, intra_list_diversity(cats)))
        if not rows:
            return 0
        s = self.settings
        try:
            self.store.record_served(rows, s.attribution_window_s, s.perf_bucket_s, s.perf_keep_s)
        except Exception as exc:  # noqa: BLE001 - never the request's problem; counted and logged
            self.dropped += len(rows)
            log.warning("dropped %d exposures: %s", len(rows), exc)
            return 0
        return len(rows)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.exposure_flush_s):
            while self.flush() == 5_000:
                pass
