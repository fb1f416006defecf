"""The Redis feature store: online features, real-time counters, live pointers.

This module owns every Redis key layout (see ``Keys``); nothing else in Nimbus builds
a key. Later layers (recommendations, experiments, monitoring) ask it for keys.
"""

from __future__ import annotations

import redis

from nimbus.config import Settings
from nimbus.errors import StoreUnavailable
from nimbus.stores import Health
from nimbus.stores._base import PerProcess, redact, timed_health


class Keys:
    """Redis key layouts, versioned by prefix so a layout change never reads old data."""

    PREFIX = "nimbus:v1"

    @classmethod
    def key(cls, *parts: str | int) -> str:
        return ":".join([cls.PREFIX, *(str(p) for p in parts)])


class FeatureStore(PerProcess):
    """A thin adapter over one Redis connection pool."""

    name = "redis"

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self.url = url
        self.client: redis.Redis = redis.Redis.from_url(
            url,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            health_check_interval=30,
            decode_responses=False,
        )

    @classmethod
    def cache_key(cls, settings: Settings) -> str:
        return settings.redis_url

    @classmethod
    def from_settings(cls, settings: Settings) -> FeatureStore:
        return cls(settings.redis_url, settings.store_timeout_s)

    def ping(self) -> None:
        """Raise StoreUnavailable (naming the URL) unless Redis answers."""
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise StoreUnavailable(self.name, redact(self.url), str(exc) or type(exc).__name__) from exc

    def health(self) -> Health:
        def probe() -> dict[str, str]:
            self.ping()
            info = self.client.info("server")
            return {"version": str(info.get("redis_version", "?"))}

        return timed_health(self.name, self.url, probe)
