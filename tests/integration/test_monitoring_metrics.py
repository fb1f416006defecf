"""/metrics on every HTTP function and the cross-process traffic rollup, against the real Redis."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from nimbus.api.automl import create_automl_app
from nimbus.api.common import create_app
from nimbus.api.events import create_events_app
from nimbus.api.health import create_health_app
from nimbus.api.models import create_models_app
from nimbus.api.recommend import create_recommend_app
from nimbus.config import Settings
from nimbus.errors import InvalidInput
from nimbus.monitoring.traffic import LATENCY_BUCKETS_MS, FunctionTraffic, rollup_for, summary
from nimbus.stores.redis.base import RedisStore

KEY = {"X-API-Key": "nimbus-local-key"}  # the local stack's key (admin: every scope)

pytestmark = pytest.mark.integration

REQUESTS, ERRORS = "nimbus_http_requests_total", "nimbus_http_request_errors_total"
LATENCY_COUNT, DEGRADED = "nimbus_http_request_duration_seconds_count", "nimbus_degraded_answers_total"


def metric(client: TestClient, owner: str, name: str, **labels: str) -> float:
    """One sample of ``/{owner}/metrics`` (0 when it does not exist yet); metrics need a read key."""
    answer = client.get(f"/{owner}/metrics", headers=KEY)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return sum(s.value for family in text_string_to_metric_families(answer.text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def counted(client: TestClient, owner: str, route: str, status: int, method: str = "GET") -> float:
    return metric(client, owner, REQUESTS, function=owner, route=route, method=method, status=str(status))


def empty_rollup(settings: Settings) -> None:
    """Counts of earlier tests still in this process go to Redis first, then Redis is emptied."""
    rollup_for(settings).flush()
    RedisStore.for_settings(settings).client.flushdb()


def test_the_health_function_counts_and_times_each_request_and_the_rollup_agrees(clean_stack: Settings) -> None:
    with TestClient(create_health_app(), headers=KEY) as client:
        empty_rollup(clean_stack)
        before = counted(client, "health", "/health", 200)
        timed = metric(client, "health", LATENCY_COUNT, function="health", route="/health")
        for _ in range(3):
            assert client.get("/health").status_code == 200
        assert counted(client, "health", "/health", 200) - before == 3
        assert metric(client, "health", LATENCY_COUNT, function="health", route="/health") - timed == 3
        assert client.get("/metrics").status_code == 200  # the bare path too (one container, one scrape)
        assert client.get("/no/such/path").status_code == 404
        assert counted(client, "health", "unmatched", 404) >= 1
    rollup_for(clean_stack).flush()
    health = summary(clean_stack)["functions"]["health"]
    # 3 x /health, 5 reads of /health/metrics, 1 x /metrics, 1 x 404: every request of this app
    assert health["requests"] == 10 and health["errors"] == 0 and health["degraded"] == 0


def test_recommend_counts_the_fast_path_the_fastapi_route_and_degraded_answers(live_recommender: dict) -> None:
    settings = live_recommender["settings"]
    user = str(live_recommender["features"].user_ids[0])
    route = "/recommendations/{user_id}"
    with TestClient(create_recommend_app(settings), headers=KEY) as client:
        fast, slow = counted(client, "recommend", route, 200), counted(client, "recommend", route, 422)
        degraded = metric(client, "recommend", DEGRADED, function="recommend")
        for _ in range(4):
            assert client.get(f"/recommendations/{user}", params={"k": 3}).status_code == 200  # fast path
        assert client.get(f"/recommendations/{user}", params={"k": 0}).status_code == 422  # FastAPI words it
        assert counted(client, "recommend", route, 200) - fast == 4
        assert counted(client, "recommend", route, 422) - slow == 1
        # A Redis failure opens the breaker: the next answers come from the fallback, degraded.
        client.app.state.service.recommender.breaker.fail()
        assert client.get(f"/recommendations/{user}").json()["degraded"] is True
        assert metric(client, "recommend", DEGRADED, function="recommend") - degraded == 1
        assert counted(client, "recommend", route, 200) - fast == 5


def test_events_models_and_automl_expose_their_counts(live_recommender: dict) -> None:
    settings = live_recommender["settings"]
    key = KEY["X-API-Key"]
    with TestClient(create_events_app(settings), headers=KEY) as client:
        before = counted(client, "events", "/events", 200, "POST")
        refused = counted(client, "events", "/events", 422, "POST")
        body = {"events": [{"event_id": "m-1", "user_id": "u1", "item_id": "i1", "type": "view"}]}
        assert client.post("/events", json=body).status_code == 200
        assert client.post("/events", json={"events": []}).status_code == 422
        assert counted(client, "events", "/events", 200, "POST") - before == 1
        assert counted(client, "events", "/events", 422, "POST") - refused == 1
    with TestClient(create_models_app(settings)) as client:
        ok, denied = counted(client, "models", "/models", 200), counted(client, "models", "/models", 401)
        assert client.get("/models", headers={"X-API-Key": key}).status_code == 200
        assert client.get("/models").status_code == 401
        assert client.get("/models", headers={"X-API-Key": key}).status_code == 200
        assert counted(client, "models", "/models", 200) - ok == 2
        assert counted(client, "models", "/models", 401) - denied == 1
        assert client.get("/models/metrics").status_code == 401  # the metrics themselves need a read key
    with TestClient(create_automl_app(), headers=KEY) as client:
        route = "/automl/jobs/{job_id}"
        before = counted(client, "automl", route, 404)
        assert client.get("/automl/jobs/no-such-job").status_code == 404
        assert counted(client, "automl", route, 404) - before == 1


def test_a_failing_route_counts_as_an_error(clean_stack: Settings) -> None:
    app = create_app("Nimbus probe", "A route that fails.", function="probe")

    @app.get("/probe/fail")
    def fail() -> None:
        raise RuntimeError("boom")

    with TestClient(app, raise_server_exceptions=False) as client:
        before = metric(client, "probe", ERRORS, function="probe", route="/probe/fail")
        assert client.get("/probe/fail").status_code == 500
        assert metric(client, "probe", ERRORS, function="probe", route="/probe/fail") - before == 1
        assert counted(client, "probe", "/probe/fail", 500) >= 1


def test_summary_percentiles_match_numpy_within_a_bucket(clean_stack: Settings) -> None:
    empty_rollup(clean_stack)
    latencies_ms = np.random.default_rng(7).lognormal(mean=0.6, sigma=0.8, size=3000)
    traffic = FunctionTraffic("synthetic", clean_stack)
    for i, ms in enumerate(latencies_ms):
        traffic.record("/synthetic", "GET", 500 if i % 100 == 0 else 200, ms / 1000)
    for _ in range(7):
        traffic.count_degraded(type("Answer", (), {"degraded": True})())
    rollup_for(clean_stack).flush()

    report = summary(clean_stack, window_s=300, bucket_s=10)
    fn = report["functions"]["synthetic"]
    assert (fn["requests"], fn["errors"], fn["degraded"]) == (3000, 30, 7)
    assert fn["rps"] == pytest.approx(3000 / 300)
    edges = (0.0, *LATENCY_BUCKETS_MS)
    for q, key in ((50, "p50_ms"), (95, "p95_ms"), (99, "p99_ms")):
        truth = float(np.percentile(latencies_ms, q))
        slot = int(np.searchsorted(LATENCY_BUCKETS_MS, truth, side="left"))
        assert abs(fn[key] - truth) <= edges[slot + 1] - edges[slot], (key, fn[key], truth)
    series = [s for s in report["series"] if s["function"] == "synthetic"]
    assert len(series) == 30 and sum(s["requests"] for s in series) == 3000
    assert all(s["p50_ms"] is None for s in series if s["requests"] == 0)
    assert {"t", "function", "requests", "errors", "degraded", "p50_ms", "p95_ms", "p99_ms"} <= set(series[0])
    assert summary(clean_stack, window_s=300, bucket_s=60)["functions"]["synthetic"]["requests"] == 3000
    with pytest.raises(InvalidInput, match="multiple of"):
        summary(clean_stack, bucket_s=15)
