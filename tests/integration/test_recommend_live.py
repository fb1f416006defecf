"""Model updates without downtime, failed loads, and Redis going away, as a serving process lives them."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from nimbus.api.recommend import RecommendService, create_recommend_app
from nimbus.local.gateway import serving
from nimbus.local.stack import LocalStack, free_port
from nimbus.recommend.bundle import MODEL_NAME
from nimbus.recommend.models import promote_version, publish
from nimbus.recommend.pipeline import publish_features
from nimbus.stores.redis.features import FeatureStore
from nimbus.stores.redis.live import LiveModelStore

pytestmark = pytest.mark.integration


def hammer(url: str, stop: threading.Event, seen: Counter, errors: list) -> None:
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            try:
                answer = client.get(url)
                if answer.status_code != 200:
                    errors.append(answer.status_code)
                else:
                    seen[answer.json()["model_version"]] += 1
            except httpx.HTTPError as exc:
                errors.append(repr(exc))


@pytest.mark.slow
def test_a_promotion_under_load_swaps_the_model_without_a_failed_request(live_recommender: dict) -> None:
    settings = live_recommender["settings"]
    first, second = live_recommender["versions"]
    user = str(live_recommender["features"].user_ids[1])
    app = create_recommend_app(settings)
    stop, seen, errors = threading.Event(), Counter(), []
    with serving(app) as base:
        httpx.get(f"{base}/recommendations/{user}", timeout=10)
        workers = [threading.Thread(target=hammer, args=(f"{base}/recommendations/{user}", stop, seen, errors))
                   for _ in range(4)]
        for worker in workers:
            worker.start()
        time.sleep(1.5)
        promote_version(settings, second)  # MLflow alias + Redis pointer + pub/sub message
        deadline = time.monotonic() + 10
        while seen[second] < 50 and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        for worker in workers:
            worker.join(timeout=15)
        final = httpx.get(f"{base}/recommendations/{user}", timeout=10).json()["model_version"]
    app.state.service.close()
    assert errors == []
    assert seen[first] > 0 and seen[second] >= 50
    assert final == second


def test_a_model_that_fails_to_load_leaves_the_old_one_serving(live_recommender: dict) -> None:
    settings = live_recommender["settings"]
    first = live_recommender["versions"][0]
    store = LiveModelStore.for_settings(settings)
    with TestClient(create_recommend_app(settings)) as client:
        user = str(live_recommender["features"].user_ids[2])
        assert client.get(f"/recommendations/{user}").json()["model_version"] == first
        store.put_model(MODEL_NAME, "77", b"this is not a model bundle")
        store.set_live(MODEL_NAME, "champion", "77")
        service: RecommendService = client.app.state.service
        assert service.recommender.live.refresh() is False
        answer = client.get(f"/recommendations/{user}").json()
        assert answer["model_version"] == first and answer["degraded"] is False
        public = client.get("/health").json()
        assert public["status"] == "degraded" and public["models"] == {"champion": first}
        assert public["last_error"] == "the last load failed (a read key shows why)"  # no internals for anyone
        health = client.get("/health", headers={"X-API-Key": "nimbus-local-key"}).json()
        assert "nimbus-recommender version 77: unreadable bundle" in health["last_error"]
        publish(settings, first)  # a good version live again: nothing to swap, and the error clears
        service.recommender.live.refresh()
        assert client.get("/health").json() | {"swaps": 0} == {
            "status": "ok", "models": {"champion": first}, "feature_version": live_recommender["features"].version,
            "redis": "ok", "swaps": 0, "last_error": None}


@pytest.mark.slow
def test_without_redis_answers_degrade_to_popular_items_and_recover(live_recommender: dict, tmp_path: Path) -> None:
    # A Redis of this test's own, so stopping it disturbs nobody else.
    port = free_port()
    settings = live_recommender["settings"].model_copy(
        update={"redis_url": f"redis://127.0.0.1:{port}/0", "home": tmp_path})
    stack = LocalStack(settings, ephemeral=True)
    stack.up(["redis"])
    try:
        publish_features(FeatureStore(settings.redis_url), live_recommender["features"])
        store = LiveModelStore(settings.redis_url)
        store.put_model(MODEL_NAME, "1", LiveModelStore.for_settings(live_recommender["settings"]).get_model(
            MODEL_NAME, live_recommender["versions"][0]))
        store.set_live(MODEL_NAME, "champion", "1")
        service = RecommendService(settings)
        recommender = service.recommender
        recommender.breaker.cool_s = 0.3
        user = str(live_recommender["features"].user_ids[0])
        assert recommender.recommend(user).strategy == "personalized"

        stack.down(["redis"])
        down = recommender.recommend(user, k=5)
        assert down.degraded and down.strategy == "fallback" and len(down.items) == 5
        items = live_recommender["features"].items
        assert down.items == [str(items.item_ids[i]) for i in items.popular[:5]]
        assert recommender.recommend(user).degraded  # the breaker is open: no wait on a dead Redis

        stack.up(["redis"])  # back, empty (ephemeral): answers are live again, not degraded
        time.sleep(0.4)
        again = recommender.recommend(user)
        assert again.degraded is False and again.strategy == "popular"
        service.close()
    finally:
        stack.down()
