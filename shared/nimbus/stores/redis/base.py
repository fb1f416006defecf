"""What every Redis store shares: one connection pool per Redis URL per process, and the one
way a store talks to Redis (:attr:`RedisStore.redis`), which turns any redis-py error
(refused connection, timeout, ...) into :class:`nimbus.errors.StoreUnavailable` naming the URL,
and an error reply about the data under a key (WRONGTYPE, ...) into its subclass
:class:`nimbus.errors.StoreDataError`.

Pub/sub lives here too: each store announces its changes on ``events:{topic}``
(:meth:`RedisStore.publish`) and :class:`nimbus.stores.redis.watcher.Watcher` follows them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Self

import redis

from nimbus.config import Settings
from nimbus.errors import StoreDataError, StoreUnavailable
from nimbus.stores import Health
from nimbus.stores._base import PerProcess, redact, timed_health
from nimbus.stores.redis.keys import Keys

_clients: dict[tuple[str, float], redis.Redis] = {}
_clients_lock = threading.Lock()


def shared_client(url: str, timeout_s: float) -> redis.Redis:
    """This process's client (and so its connection pool) for ``url`` with this socket timeout.

    Every store on one Redis shares it; the recommend request path asks for its own, with
    the short ``request_timeout_s``, so a slow Redis degrades answers instead of stalling them.
    """
    key = (url, timeout_s)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = redis.Redis.from_url(
                url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, health_check_interval=30,
                decode_responses=False)
        return client


# Error replies that mean the server cannot serve anyone right now (not a problem of one key).
_OUTAGES = (redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError, redis.exceptions.BusyLoadingError)


class Guarded:
    """``with store.redis as r:`` hands out the client; a redis-py or socket error inside the
    block leaves it as StoreUnavailable. Stateless, so one per store serves every thread."""

    __slots__ = ("client", "name", "url")

    def __init__(self, client: redis.Redis, name: str, url: str) -> None:
        self.client, self.name, self.url = client, name, url

    def __enter__(self) -> redis.Redis:
        return self.client

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None and issubclass(exc_type, (redis.RedisError, OSError)):
            reason = str(exc) or exc_type.__name__
            if issubclass(exc_type, redis.ResponseError) and not issubclass(exc_type, _OUTAGES):
                raise StoreDataError(self.name, self.url, reason) from exc
            raise StoreUnavailable(self.name, self.url, reason) from exc


class RedisStore(PerProcess):
    """Base of the Redis stores: the shared pool, the guarded call, health and pub/sub."""

    name = "redis"

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.client = shared_client(url, timeout_s)
        self.redis = Guarded(self.client, self.name, redact(url))

    @classmethod
    def cache_key(cls, settings: Settings) -> str:
        return settings.redis_url

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(settings.redis_url, settings.store_timeout_s)

    def ping(self) -> None:
        """Raise StoreUnavailable (naming the URL) unless Redis answers."""
        with self.redis as r:
            r.ping()

    def health(self) -> Health:
        def probe() -> dict[str, str]:
            with self.redis as r:
                r.ping()
                info = r.info("server")
            return {"version": str(info.get("redis_version", "?"))}

        return timed_health(self.name, self.url, probe)

    def publish(self, topic: str, message: str) -> None:
        """Announce a change on ``events:{topic}`` to every process that watches it."""
        with self.redis as r:
            r.publish(Keys.channel(topic), message)

    def subscribe(self, *topics: str) -> Iterator[dict]:
        """Messages on the given channels, forever (until the connection fails: StoreUnavailable)."""
        with self.redis:
            # A connection of its own without a read timeout: a quiet channel is not an error.
            listener = redis.Redis.from_url(self.url, socket_connect_timeout=self.timeout_s, socket_timeout=None,
                                            socket_keepalive=True)
            pubsub = listener.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(*(Keys.channel(t) for t in topics))
                yield from pubsub.listen()
            finally:
                pubsub.close()
                listener.close()
