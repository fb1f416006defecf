"""Live swap, shared by every serving process: build the next state in the background, swap one reference.

A :class:`LiveView` holds an immutable ``state``. ``refresh`` asks ``build(old)`` for the next one —
which loads, validates and warms it while requests keep reading the old state — and then swaps a
single reference. Requests in flight keep the state they started with, so a swap never fails one. A
build that raises keeps the old state serving and is reported (``last_error``, the log, /health).

The view follows announcements through a :class:`~nimbus.stores.redis.watcher.Watcher`: now, on a
pub/sub message and on a poll. The recommender's live models and the ``predict`` function's registry
models are both views (:mod:`nimbus.recommend.live`, :mod:`nimbus.serving.live`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Generic, TypeVar

from nimbus.stores.redis.base import RedisStore
from nimbus.stores.redis.watcher import Watcher

S = TypeVar("S")


class LiveView(Generic[S]):
    """``state`` kept in step with the outside world; subclasses say how to build the next one."""

    def __init__(self, initial: S, store: RedisStore, topics: Sequence[str], poll_s: float = 2.0,
                 name: str = "live", logger: logging.Logger | None = None) -> None:
        self.state: S = initial
        self.last_error: str | None = None
        self.swaps = 0
        self.log = logger or logging.getLogger(f"nimbus.{name}")
        self._lock = threading.RLock()  # one build at a time; readers never take it
        self._watcher = Watcher(store, topics, self.refresh, poll_s, name=name)

    def build(self, old: S) -> S | None:
        """The next state, loaded, validated and warmed; None when nothing changed. Raise to keep ``old``."""
        raise NotImplementedError

    def describe(self, state: S) -> str:
        return repr(state)

    def refresh(self) -> bool:
        """Build what changed; True when the state was swapped."""
        with self._lock:
            old = self.state
            try:
                new = self.build(old)
            except Exception as exc:  # noqa: BLE001 - report and keep serving the old state
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.log.error("live refresh failed, still serving %s: %s", self.describe(old), self.last_error)
                return False
            self.last_error = None
            if new is None:
                return False
            self.state = new  # the swap: one reference
            self.swaps += 1
            self.log.info("now serving %s", self.describe(new))
            return True

    def start(self) -> None:
        """Load now (synchronously, once) and follow in the background from then on."""
        self._watcher.start()

    def stop(self) -> None:
        self._watcher.stop()
