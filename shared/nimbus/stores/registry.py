"""MLflow: the model registry (versions, champion/challenger aliases) and experiment tracking.

``mlflow`` is imported lazily: it costs seconds, and a handler that never touches the
registry (health of an HTTP server, say) should not pay for it on a cold start.
"""

from __future__ import annotations

import urllib.request
from typing import TYPE_CHECKING, Any

from nimbus.config import Settings
from nimbus.errors import StoreUnavailable
from nimbus.stores import Health
from nimbus.stores._base import PerProcess, redact, timed_health

if TYPE_CHECKING:
    from mlflow import MlflowClient


class Registry(PerProcess):
    """A thin adapter over MlflowClient bound to the configured tracking/registry URIs."""

    name = "mlflow"

    def __init__(self, tracking_uri: str, registry_uri: str, timeout_s: float = 2.0) -> None:
        self.url = tracking_uri
        self.registry_uri = registry_uri
        self.timeout_s = timeout_s
        self._client: MlflowClient | None = None

    @classmethod
    def cache_key(cls, settings: Settings) -> tuple[str, str]:
        return (settings.tracking_uri, settings.registry_uri)

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        return cls(settings.tracking_uri, settings.registry_uri, settings.store_timeout_s)

    @property
    def is_server(self) -> bool:
        return self.url.startswith(("http://", "https://"))

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.url, registry_uri=self.registry_uri)
        return self._client

    def ping(self) -> dict[str, str]:
        """Raise StoreUnavailable unless the tracking store answers."""
        if self.is_server:
            # The server's own liveness endpoint: no mlflow import, bounded by our timeout.
            try:
                with urllib.request.urlopen(f"{self.url.rstrip('/')}/health", timeout=self.timeout_s) as answer:
                    body = answer.read().decode()
            except OSError as exc:
                raise StoreUnavailable(self.name, redact(self.url), str(getattr(exc, "reason", exc))) from exc
            return {"server": body.strip()[:40]}
        try:
            self.client.search_experiments(max_results=1)
        except Exception as exc:  # mlflow raises many types (sqlalchemy, MlflowException)
            raise StoreUnavailable(self.name, redact(self.url), str(exc).splitlines()[0]) from exc
        return {"backend": self.url.split(":", 1)[0]}

    def health(self) -> Health:
        return timed_health(self.name, self.url, self.ping)

    def tracking_env(self) -> dict[str, Any]:
        """Environment for child processes (Spark executors, Ray workers) to reach the same MLflow."""
        return {"MLFLOW_TRACKING_URI": self.url, "MLFLOW_REGISTRY_URI": self.registry_uri}
