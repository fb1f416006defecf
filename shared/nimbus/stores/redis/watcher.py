"""A background follower of Redis state: refresh now, on every announcement, and on a poll."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from nimbus.stores.redis.base import RedisStore

log = logging.getLogger(__name__)


class Watcher:
    """Calls ``refresh`` now, then every ``poll_s`` and whenever a message arrives on ``topics``.

    Pub/sub makes a change seen at once; the poll covers a missed message or a Redis that was
    away (the subscription is retried). Used by every process-local view of Redis state that
    must follow changes: the live models, the running experiments."""

    def __init__(self, store: RedisStore, topics: Sequence[str], refresh: Callable[[], object],
                 poll_s: float = 2.0, name: str = "watcher") -> None:
        self.store, self.topics, self.refresh, self.poll_s, self.name = store, tuple(topics), refresh, poll_s, name
        self._stop = threading.Event()
        self._started = False

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.refresh()
        threading.Thread(target=self._poll, name=f"{self.name}-poll", daemon=True).start()
        threading.Thread(target=self._listen, name=f"{self.name}-listen", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.refresh()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                for _ in self.store.subscribe(*self.topics):
                    self.refresh()
                    if self._stop.is_set():
                        return
            # Redis away (or a refresh failed): the poller covers; retry the subscription later. Blind on
            # purpose: this thread must outlive any failure, or the view would stop following pub/sub.
            except Exception as exc:  # noqa: BLE001
                log.debug("%s listener: %s", self.name, exc)
                self._stop.wait(self.poll_s)
