"""Prometheus metrics whose values live in Redis and MongoDB, read when ``/metrics`` is scraped.

The HTTP counters (``monitoring.traffic``) are per process; these are facts of the stores,
so any replica's ``/metrics`` shows the same values:

* ``nimbus_model_live_version{model,alias}`` — the version each alias of each model serves
  (the live pointers in Redis);
* ``nimbus_drift_psi{model,feature}`` — PSI of each of the model's own features in its
  latest drift check, ``nimbus_drift_score_psi{model}`` of its scores, and
  ``nimbus_drift_checked_timestamp_seconds{model}``;
* ``nimbus_automl_jobs{status}`` — AutoML jobs by status (``queued`` is the queue depth);
* ``nimbus_batch_records_scored_total{model}``, ``nimbus_batch_records_quarantined_total{model}``
  and ``nimbus_batch_records_total{model}`` — records of every batch run, by model it scored with;
* ``nimbus_metrics_store_up{store}`` — 0 when a store could not be read for this scrape.

Label values are model names, their aliases and features, and the fixed job statuses — never
a user or request id. A scrape costs a few bounded reads (one SMEMBERS + one pipelined
read per model, one indexed query per model and per status, one projection over the batch
runs), reused for ``metrics_cache_s`` so that several scrapers cost no more.

pymongo is imported at the first scrape, not with the module: the recommend function's cold
start (which registers this collector) does not pay for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from nimbus.config import Settings
from nimbus.errors import NimbusError
from nimbus.recommend.bundle import MODEL_NAME
from nimbus.stores.redis.live import LiveModelStore

if TYPE_CHECKING:
    from nimbus.stores.documents import DocumentStore

log = logging.getLogger("nimbus.api.exporter")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")  # as nimbus.automl.jobs.STATUSES
STORE_ERRORS: tuple[type[BaseException], ...] = (NimbusError, OSError)  # and pymongo's, once it is imported

# Every metric name this module exports (a unit test checks the Grafana dashboard and alert rules against it).
EXPORTED = ("nimbus_model_live_version", "nimbus_drift_psi", "nimbus_drift_score_psi",
            "nimbus_drift_checked_timestamp_seconds", "nimbus_automl_jobs", "nimbus_batch_records_scored_total",
            "nimbus_batch_records_quarantined_total", "nimbus_batch_records_total", "nimbus_metrics_store_up")


class StoreCollector(Collector):
    """A custom collector (``prometheus_client``'s own extension point), so the values are read at scrape time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def describe(self) -> list[Metric]:
        return []  # no read at registration time; names are listed in EXPORTED

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # concurrent scrapes share one read
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self.settings.metrics_cache_s:
                self._cached = (now, self._read())
            metrics = self._cached[1]
        yield from metrics

    def _read(self) -> list[Metric]:
        import pymongo.errors

        from nimbus.stores.documents import DocumentStore

        errors = (*STORE_ERRORS, pymongo.errors.PyMongoError)
        up = GaugeMetricFamily("nimbus_metrics_store_up", "1 when /metrics could read this store.", labels=["store"])
        metrics: list[Metric] = []
        live: dict[str, dict[str, str]] = {}
        try:
            live = LiveModelStore.for_settings(self.settings).live_models(also=(MODEL_NAME,))
            metrics.append(_live_versions(live))
            up.add_metric(["redis"], 1)
        except errors as exc:
            log.warning("metrics: redis unreadable: %s", exc)
            up.add_metric(["redis"], 0)
        try:
            db = DocumentStore.for_settings(self.settings)
            metrics.extend(_drift(db, live))
            metrics.append(_jobs(db))
            metrics.extend(_batch(db))
            up.add_metric(["mongodb"], 1)
        except errors as exc:
            log.warning("metrics: mongodb unreadable: %s", exc)
            up.add_metric(["mongodb"], 0)
        return [*metrics, up]


def _live_versions(live: dict[str, dict[str, str]]) -> Metric:
    gauge = GaugeMetricFamily("nimbus_model_live_version", "Version each alias of a model serves (live pointer).",
                              labels=["model", "alias"])
    for model, aliases in live.items():
        for alias, version in sorted(aliases.items()):
            if version.isdigit():
                gauge.add_metric([model, alias], float(version))
    return gauge


def _drift(db: DocumentStore, live: dict[str, dict[str, str]]) -> list[Metric]:
    import pymongo

    from nimbus.stores.documents import Collections

    checks = db.collection(Collections.DRIFT_CHECKS)
    features = GaugeMetricFamily("nimbus_drift_psi", "PSI of a model feature in its latest drift check.",
                                 labels=["model", "feature"])
    score = GaugeMetricFamily("nimbus_drift_score_psi", "PSI of the model's scores in its latest drift check.",
                              labels=["model"])
    checked = GaugeMetricFamily("nimbus_drift_checked_timestamp_seconds", "When the latest drift check ran.",
                                labels=["model"])
    for model in sorted(live):  # models that serve; their features only (a check names the model's own)
        doc = checks.find_one({"model": model}, sort=[("checked_at", pymongo.DESCENDING)],
                              projection={"features": 1, "score": 1, "checked_at": 1})
        if not doc:
            continue
        for feature in doc.get("features") or []:
            if feature.get("psi") is not None:
                features.add_metric([model, str(feature["name"])], float(feature["psi"]))
        if (doc.get("score") or {}).get("psi") is not None:
            score.add_metric([model], float(doc["score"]["psi"]))
        if hasattr(doc.get("checked_at"), "timestamp"):
            checked.add_metric([model], doc["checked_at"].timestamp())
    return [features, score, checked]


def _jobs(db: DocumentStore) -> Metric:
    gauge = GaugeMetricFamily("nimbus_automl_jobs", "AutoML jobs by status (queued: the queue depth).",
                              labels=["status"])
    from nimbus.stores.documents import Collections

    jobs = db.collection(Collections.AUTOML_JOBS)
    for status in JOB_STATUSES:  # the (status, created_at) index answers each count
        gauge.add_metric([status], jobs.count_documents({"status": status}))
    return gauge


def _batch(db: DocumentStore) -> list[Metric]:
    from nimbus.stores.documents import Collections

    totals: dict[str, list[int]] = {}
    for run in db.collection(Collections.BATCH_RUNS).find({"counts": {"$exists": True}},
                                                          projection={"counts": 1, "models": 1}):
        counts = run.get("counts") or {}
        for model in run.get("models") or {}:
            row = totals.setdefault(str(model), [0, 0, 0])
            row[0] += int(counts.get("records", 0))
            row[1] += int(counts.get("scored", 0))
            row[2] += int(counts.get("quarantined", 0))
    records = CounterMetricFamily("nimbus_batch_records", "Records read by batch runs, by model.", labels=["model"])
    scored = CounterMetricFamily("nimbus_batch_records_scored", "Records batch runs scored, by model.",
                                 labels=["model"])
    quarantined = CounterMetricFamily("nimbus_batch_records_quarantined",
                                      "Records batch runs quarantined as bad, by model.", labels=["model"])
    for model, (n, good, bad) in sorted(totals.items()):
        records.add_metric([model], n)
        scored.add_metric([model], good)
        quarantined.add_metric([model], bad)
    return [records, scored, quarantined]


_collector: StoreCollector | None = None
_collector_lock = threading.Lock()


def register(settings: Settings) -> StoreCollector:
    """Add the store collector to the process registry once (many apps, one process, one set of stores)."""
    global _collector
    with _collector_lock:
        if _collector is None:
            _collector = StoreCollector(settings)
            REGISTRY.register(_collector)
        elif _collector.settings is not settings:
            _collector.settings, _collector._cached = settings, None
        return _collector
