"""One adapter per backend, nothing else: the Redis stores (``redis/``: features, live models,
experiments, telemetry), documents (MongoDB), objects and queues (S3/SQS), registry and tracking (MLflow).

Every adapter is built from Settings, reuses its connection across warm invocations
(``for_settings`` caches one per URL), answers ``health()`` without raising, and turns
an unreachable backend into :class:`nimbus.errors.StoreUnavailable` naming the URL.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Health:
    """What one store answered to a health check."""

    store: str
    url: str
    up: bool
    latency_ms: float
    detail: str = ""
    info: dict[str, str] = field(default_factory=dict)
