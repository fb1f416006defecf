"""Drift checks end to end: answers served by the real recommend app are sampled into Redis,
checked against the reference logged in MLflow at training time, and the result lands in
MongoDB — no drift for unchanged traffic, drift in exactly the feature we shift."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from scipy import stats

from nimbus import alerts
from nimbus.api.recommend import create_recommend_app
from nimbus.config import Settings
from nimbus.local.stack import free_port
from nimbus.monitoring import drift
from nimbus.recommend.bundle import MODEL_NAME
from nimbus.recommend.featurize import compute_features
from nimbus.recommend.pipeline import publish_features
from nimbus.stores.redis.features import FeatureStore
from nimbus.stores.redis.live import LiveModelStore
from tests.e2e.test_cli import run

pytestmark = pytest.mark.integration

SCHEDULE_EVENT = "tests/data/events/eventbridge_scheduled.json"


def serve_half_the_users(live: dict, seed: int) -> int:
    """Ask the real recommend app (fast path) for a random half of the known users, every
    answer sampled; returns how many samples reached Redis."""
    # Every answer sampled; a generous Redis timeout, as other sessions share these 2 cores.
    settings: Settings = live["settings"].model_copy(update={"drift_sample_rate": 1.0, "request_timeout_s": 2.0})
    users = np.random.default_rng(seed).permutation(live["features"].user_ids)[: len(live["features"].user_ids) // 2]
    store = LiveModelStore.for_settings(settings)
    with TestClient(create_recommend_app(settings)) as client:
        for user in users:
            answer = client.get(f"/recommendations/{user}")
            assert answer.status_code == 200 and answer.json()["strategy"] == "personalized"
        deadline = time.monotonic() + 30
        while len(store.samples(MODEL_NAME)) < len(users) and time.monotonic() < deadline:
            time.sleep(0.2)  # the sampler writes off the request path, once a second
    assert len(store.samples(MODEL_NAME)) == len(users)
    return len(users)


def test_unchanged_traffic_is_not_drift(live_recommender: dict) -> None:
    settings, version = live_recommender["settings"], live_recommender["versions"][0]
    (early,) = drift.run_check(settings, MODEL_NAME)
    assert early["status"] == "insufficient_samples" and early["samples"] == 0 and not early["drifted"]

    samples = serve_half_the_users(live_recommender, seed=1)
    done = run(["monitor", "drift"], {})
    assert done.returncode == 0, done.stderr
    assert f"{MODEL_NAME} v{version} (champion): ok, {samples} samples, no drift" in done.stdout

    latest = drift.history(settings, MODEL_NAME)[0]
    assert latest["status"] == "ok" and latest["samples"] == samples and latest["model_version"] == version
    assert {f["name"] for f in latest["features"]} == {"emb_dot", "cooc", "item_pop", "item_ctr", "item_buy_rate",
                                                      "cat_share", "item_price", "category"}
    assert not any(f["drifted"] for f in latest["features"]) and not latest["score"]["drifted"]
    assert not latest["drifted"] and drift.alerts(settings) == []
    assert [c["status"] for c in drift.history(settings, MODEL_NAME)] == ["ok", "insufficient_samples"]


def test_a_planted_price_shift_is_flagged_by_the_scheduled_monitor(live_recommender: dict) -> None:
    settings, version = live_recommender["settings"], live_recommender["versions"][0]
    dataset = live_recommender["dataset"]
    catalogue = dataset.catalogue.assign(price=dataset.catalogue["price"] * 3)  # prices tripled overnight
    shifted = compute_features(dataclasses.replace(dataset, catalogue=catalogue), version="prices-x3")
    publish_features(FeatureStore.for_settings(settings), shifted)
    samples = serve_half_the_users(live_recommender, seed=2)

    # an alert webhook that is down: the monitor still answers, and the drift alert waits for it
    done = run(["invoke", "monitor", "--event", SCHEDULE_EVENT, "--json"],
               {"NIMBUS_ALERT_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/hook"})
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    (check,) = answer["checks"]
    assert check == {"model": MODEL_NAME, "model_version": version, "status": "ok", "samples": samples,
                     "drifted": True, "drifted_features": ["item_price"]}
    assert answer["alerts"]["failed"] >= 1 and answer["alerts"]["delivered"] == 0
    (fired,) = [a for a in alerts.list_alerts(settings) if a["kind"] == "drift"]
    assert fired["subject"] == f"model:{MODEL_NAME}:v{version}" and fired["state"] == "firing"
    assert fired["pending"] == ["webhook"] and "item_price" in fired["summary"]

    latest = drift.history(settings, MODEL_NAME)[0]
    by_name = {f["name"]: f for f in latest["features"]}
    assert by_name["item_price"]["psi"] > 0.1 and by_name["item_price"]["ks_p"] < 0.05
    assert not latest["score"]["drifted"]  # the ranker barely weighs price: its scores did not move
    # The stored figures are scipy's KS on the reference sample in MLflow and the live samples in Redis.
    reference = drift.load_reference(settings, MODEL_NAME, version)
    samples = LiveModelStore.for_settings(settings).samples(MODEL_NAME)
    live = [orjson.loads(r)["features"]["item_price"] for r in samples]
    expected = stats.ks_2samp(reference["numeric"]["item_price"]["sample"], live).pvalue
    assert by_name["item_price"]["ks_p"] == pytest.approx(expected, rel=1e-9)
    assert by_name["category"]["chi2_p"] is not None and not by_name["category"]["drifted"]

    (alert,) = drift.alerts(settings)
    assert alert["features"] == ["item_price"] and alert["model_version"] == version
    assert alert["check_id"] == latest["id"] and "item_price" in alert["message"]
    json.dumps(drift.history(settings, MODEL_NAME)), json.dumps(drift.alerts(settings))  # the contract: JSON-able


def test_the_monitor_function_refuses_an_http_event(clean_stack: Settings) -> None:
    done = run(["invoke", "monitor", "--event", "tests/data/events/apigw_v2_get.json"], {})
    assert done.returncode != 0 or "errorMessage" in done.stdout
    assert "monitor runs on a schedule" in done.stdout + done.stderr
