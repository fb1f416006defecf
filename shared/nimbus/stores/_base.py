"""Small helpers shared by the store adapters (timing health checks, hiding secrets in URLs)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit, urlunsplit

from nimbus.config import Settings
from nimbus.stores import Health


class PerProcess:
    """One adapter per backend address per process, so warm invocations reuse connections.

    Subclasses say what identifies their backend (``cache_key``) and how to build one
    from settings (``from_settings``); ``for_settings`` does the caching.
    """

    _instances: ClassVar[dict[tuple[type, Hashable], Any]] = {}
    _instances_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def cache_key(cls, settings: Settings) -> Hashable:
        raise NotImplementedError

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        raise NotImplementedError

    @classmethod
    def for_settings(cls, settings: Settings) -> Self:
        key = (cls, cls.cache_key(settings))
        with cls._instances_lock:
            if key not in cls._instances:
                cls._instances[key] = cls.from_settings(settings)
            return cls._instances[key]


def redact(url: str) -> str:
    """A URL fit for logs and error messages: the password is replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def timed_health(store: str, url: str, probe: Callable[[], dict[str, str] | None]) -> Health:
    """Run ``probe``; any exception means down, with its message as the detail."""
    start = time.perf_counter()
    try:
        info = probe() or {}
    except Exception as exc:  # noqa: BLE001 - a health check reports, it never raises
        # The URL is already in the Health; keep the detail to the reason alone.
        reason = getattr(exc, "reason", None) or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return Health(store, redact(url), False, (time.perf_counter() - start) * 1000, reason[:300])
    return Health(store, redact(url), True, (time.perf_counter() - start) * 1000, "ok", info)
