"""The store-backed Prometheus metrics (``nimbus.api.exporter``) read from the real Redis and MongoDB."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from nimbus.api import exporter
from nimbus.api.health import create_health_app
from nimbus.config import Settings
from nimbus.stores.documents import Collections, DocumentStore
from nimbus.stores.redis.live import LiveModelStore

pytestmark = pytest.mark.integration
KEY = {"X-API-Key": "nimbus-local-key"}


def samples(families) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in families for s in family.samples}


def plant(settings: Settings) -> None:
    live = LiveModelStore.for_settings(settings)
    live.set_live("ranker", "champion", "4")
    live.set_live("ranker", "challenger", "5")
    db = DocumentStore.for_settings(settings)
    db.collection(Collections.DRIFT_CHECKS).insert_many([
        {"model": "ranker", "checked_at": datetime(2026, 1, 1, tzinfo=UTC),
         "features": [{"name": "age", "psi": 0.9}], "score": {"psi": 0.8}},
        {"model": "ranker", "checked_at": datetime(2026, 1, 2, tzinfo=UTC),  # the latest: the one reported
         "features": [{"name": "age", "psi": 0.25}, {"name": "clicks", "psi": 0.01}, {"name": "empty", "psi": None}],
         "score": {"psi": 0.03}},
        {"model": "not-live", "checked_at": datetime(2026, 1, 2, tzinfo=UTC), "features": [{"name": "x", "psi": 1}]},
    ])
    db.collection(Collections.AUTOML_JOBS).insert_many(
        [{"_id": f"q{i}", "status": "queued"} for i in range(3)] + [{"_id": "r", "status": "running"}])
    db.collection(Collections.BATCH_RUNS).insert_many([
        {"_id": "run-1", "models": {"ranker": "4"}, "counts": {"records": 10, "scored": 9, "quarantined": 1}},
        {"_id": "run-2", "models": {"ranker": "4", "churn": "1"},
         "counts": {"records": 5, "scored": 3, "quarantined": 2}},
        {"_id": "run-3", "models": {"ranker": "4"}, "status": "running"},  # no counts yet
    ])


def test_live_versions_drift_jobs_and_batch_counts_come_from_the_stores(clean_stack: Settings) -> None:
    plant(clean_stack)
    got = samples(exporter.StoreCollector(clean_stack).collect())
    assert got[("nimbus_model_live_version", (("alias", "champion"), ("model", "ranker")))] == 4
    assert got[("nimbus_model_live_version", (("alias", "challenger"), ("model", "ranker")))] == 5
    drift = {labels: v for (name, labels), v in got.items() if name == "nimbus_drift_psi"}
    assert drift == {(("feature", "age"), ("model", "ranker")): 0.25, (("feature", "clicks"), ("model", "ranker")): 0.01}
    assert got[("nimbus_drift_score_psi", (("model", "ranker"),))] == 0.03
    assert got[("nimbus_automl_jobs", (("status", "queued"),))] == 3
    assert got[("nimbus_automl_jobs", (("status", "running"),))] == 1
    assert got[("nimbus_automl_jobs", (("status", "failed"),))] == 0
    assert got[("nimbus_batch_records_scored_total", (("model", "ranker"),))] == 12
    assert got[("nimbus_batch_records_quarantined_total", (("model", "ranker"),))] == 3
    assert got[("nimbus_batch_records_total", (("model", "churn"),))] == 5
    assert got[("nimbus_metrics_store_up", (("store", "mongodb"),))] == 1
    assert {name for name, _ in got} <= set(exporter.EXPORTED)


def test_a_scrape_reuses_its_reads_for_the_cache_time(clean_stack: Settings) -> None:
    collector = exporter.StoreCollector(clean_stack.model_copy(update={"metrics_cache_s": 3600}))
    key = ("nimbus_automl_jobs", (("status", "queued"),))
    assert samples(collector.collect())[key] == 0
    DocumentStore.for_settings(clean_stack).collection(Collections.AUTOML_JOBS).insert_one({"status": "queued"})
    assert samples(collector.collect())[key] == 0  # cached
    assert samples(exporter.StoreCollector(clean_stack.model_copy(update={"metrics_cache_s": 0})).collect())[key] == 1


def test_an_unreachable_store_is_reported_not_raised(clean_stack: Settings) -> None:
    gone = clean_stack.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    got = samples(exporter.StoreCollector(gone).collect())
    assert got[("nimbus_metrics_store_up", (("store", "redis"),))] == 0
    assert got[("nimbus_metrics_store_up", (("store", "mongodb"),))] == 1


def test_any_function_serves_the_store_metrics_on_its_metrics_route(clean_stack: Settings) -> None:
    plant(clean_stack)
    with TestClient(create_health_app(), headers=KEY) as client:
        exporter.register(clean_stack)._cached = None  # this test's planted state, not an earlier scrape's
        text = client.get("/health/metrics").text
    got = samples(text_string_to_metric_families(text))
    assert got[("nimbus_model_live_version", (("alias", "champion"), ("model", "ranker")))] == 4


def test_the_recommender_pointer_published_before_the_model_set_existed_is_reported(clean_stack: Settings) -> None:
    from nimbus.recommend.bundle import MODEL_NAME
    from nimbus.stores.redis.base import RedisStore
    from nimbus.stores.redis.keys import Keys

    RedisStore.for_settings(clean_stack).client.hset(Keys.model_live(MODEL_NAME), "champion", "2")  # no SADD
    got = samples(exporter.StoreCollector(clean_stack).collect())
    assert got[("nimbus_model_live_version", (("alias", "champion"), ("model", MODEL_NAME)))] == 2
