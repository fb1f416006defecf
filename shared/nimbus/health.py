"""Which stores are up: the one core function behind the ``health`` function and CLI."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from pydantic import BaseModel, Field

from nimbus import __version__
from nimbus.config import Settings
from nimbus.stores.documents import DocumentStore
from nimbus.stores.objects import ObjectStore
from nimbus.stores.redis.base import RedisStore
from nimbus.stores.registry import Registry

_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="health")


class StoreHealth(BaseModel):
    store: str = Field(examples=["redis"])
    up: bool
    url: str | None = Field(examples=["redis://127.0.0.1:6379/0"],
                            description="Where it was looked for (passwords hidden); only for a read key.")
    latency_ms: float = Field(examples=[0.4])
    detail: str = Field(examples=["ok"], description="'ok', or why it is down ('down' without a read key).")
    info: dict[str, str] = Field(default_factory=dict, examples=[{"version": "7.0.15"}, {"version": "7.0.15", "cluster": "ok, 3 masters"}])


class HealthReport(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="'ok' when every store is up.")
    version: str = Field(examples=[__version__])
    stores: list[StoreHealth]

    def public(self) -> HealthReport:
        """What anyone may see: which stores are up and how fast, not where they live or what failed."""
        return self.model_copy(update={"stores": [
            s.model_copy(update={"url": None, "detail": "ok" if s.up else "down", "info": {}}) for s in self.stores]})


def check_stores(settings: Settings) -> HealthReport:
    """Ask every store at once, each bounded by ``store_timeout_s``; never raises."""
    stores = [
        RedisStore.for_settings(settings),
        DocumentStore.for_settings(settings),
        ObjectStore.for_settings(settings),
        Registry.for_settings(settings),
    ]
    results = list(_pool.map(lambda store: store.health(), stores))
    healths = [StoreHealth(**vars(h)) for h in results]
    return HealthReport(
        status="ok" if all(h.up for h in healths) else "degraded", version=__version__, stores=healths
    )
