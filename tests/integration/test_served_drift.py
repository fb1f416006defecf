"""Drift for every served registry model, end to end: a model registered with its drift reference by
the real training paths (the batch example models, AutoML's registration), served by the real predict
app, its answers sampled into Redis, and the scheduled monitor (``nimbus invoke monitor``) checking it —
ok for inputs like the training data, drift in exactly the feature shifted, with an alert delivered to
a webhook."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import orjson
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from nimbus import alerts, governance
from nimbus.api.predict import create_predict_app
from nimbus.automl.tracking import register_winner
from nimbus.batch.examples import FEATURES, make_records
from nimbus.config import Settings
from nimbus.monitoring import drift
from nimbus.serving.samples import score_of
from nimbus.stores.redis.live import LiveModelStore
from tests.e2e.test_cli import run
from tests.integration.test_alerts import Receiver

pytestmark = pytest.mark.integration
KEY = {"X-API-Key": "nimbus-local-key"}  # the local stack's key (admin: every scope)
SCHEDULE_EVENT = "tests/data/events/eventbridge_scheduled.json"
SERVED = 400  # over drift_min_samples (200)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def churn_inputs(n: int, seed: int) -> pd.DataFrame:
    table, _ = make_records(n, seed=seed)
    return table.select(FEATURES).to_pandas().astype(np.float64)


def serve(settings: Settings, model: str, frame: pd.DataFrame, chunk: int = 40) -> list[dict]:
    """POST ``frame``'s records to the real predict app (every record sampled); the app's shutdown
    flushes the samples. Returns the predictions."""
    predictions = []
    sampled = settings.model_copy(update={"predict_sample_rate": 1.0})
    with TestClient(create_predict_app(sampled)) as client:
        rows = frame.to_dict("records")
        for start in range(0, len(rows), chunk):
            answer = client.post(f"/predict/{model}", json=rows[start:start + chunk], headers=KEY)
            assert answer.status_code == 200, answer.text
            predictions += answer.json()["predictions"]
    return predictions


def monitor(receiver: Receiver) -> dict:
    done = run(["invoke", "monitor", "--event", SCHEDULE_EVENT, "--json"], {"NIMBUS_ALERT_WEBHOOK_URL": receiver.url})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_inputs_like_the_training_data_are_no_drift(batch_stack: Settings, churn_models: dict[str, str],
                                                    receiver: Receiver) -> None:
    version = churn_models["churn-lr"]
    predictions = serve(batch_stack, "churn-lr", churn_inputs(SERVED, seed=7))

    stored = [orjson.loads(r) for r in LiveModelStore.for_settings(batch_stack).samples("churn-lr")]
    assert len(stored) == SERVED and {r["model_version"] for r in stored} == {version}
    assert set(stored[0]["features"]) == set(FEATURES) and stored[0]["categorical"] == {}
    # newest first: the last record answered is the first row, its score the answer's own
    assert stored[0]["score"] == pytest.approx(score_of(predictions[-1]), abs=1e-12)
    assert LiveModelStore.for_settings(batch_stack).sampled_models() == ["churn-lr"]

    answer = monitor(receiver)
    (check,) = [c for c in answer["checks"] if c["model"] == "churn-lr"]
    assert check == {"model": "churn-lr", "model_version": version, "status": "ok", "samples": SERVED,
                     "drifted": False, "drifted_features": []}
    (latest,) = drift.history(batch_stack, "churn-lr")
    assert latest["aliases"] == ["champion"] and {f["name"] for f in latest["features"]} == set(FEATURES)
    assert latest["score"]["psi"] is not None and not latest["score"]["drifted"]
    assert drift.alerts(batch_stack) == [] and receiver.bodies == []

    done = run(["monitor", "drift", "--model", "churn-lr"])
    assert done.returncode == 0, done.stderr
    assert f"churn-lr v{version} (champion): ok, {SERVED} samples, no drift" in done.stdout


def test_a_shifted_feature_is_flagged_by_name_and_alerted(batch_stack: Settings, churn_models: dict[str, str],
                                                          receiver: Receiver) -> None:
    version = churn_models["churn-lr"]
    shifted = churn_inputs(SERVED, seed=8).assign(f3=lambda f: f["f3"] + 1.5)  # f3 moved by 1.5 sd
    serve(batch_stack, "churn-lr", shifted)

    answer = monitor(receiver)
    (check,) = [c for c in answer["checks"] if c["model"] == "churn-lr"]
    assert check["status"] == "ok" and check["drifted"] and check["model_version"] == version
    assert check["drifted_features"] == ["f3"]
    assert answer["alerts"]["delivered"] >= 1
    (body,) = [b for b in receiver.bodies if b["kind"] == "drift"]
    assert (body["status"], body["subject"]) == ("firing", f"model:churn-lr:v{version}") and "f3" in body["summary"]
    (fired,) = [a for a in alerts.list_alerts(batch_stack) if a["kind"] == "drift"]
    assert fired["state"] == "firing" and fired["pending"] == []

    (latest,) = drift.history(batch_stack, "churn-lr")
    by_name = {f["name"]: f for f in latest["features"]}
    assert by_name["f3"]["psi"] > 0.1 and by_name["f3"]["ks_p"] < 0.05
    (alert,) = drift.alerts(batch_stack)
    assert alert["features"] == ["f3"] and alert["check_id"] == latest["id"]


def plans(n: int, seed: int, business: float = 0.3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"usage": rng.gamma(2.0, 10.0, n), "seats": rng.integers(1, 20, n).astype(np.int64),
                         "plan": rng.choice(["free", "team", "business"], n, p=[0.7 - business, 0.3, business])})


def test_an_automl_winner_logs_its_reference_and_a_category_shift_is_flagged(clean_stack: Settings,
                                                                            receiver: Receiver) -> None:
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    x = plans(3000, seed=1)
    y = (x["usage"] > 20) | (x["plan"] == "business")
    model = make_pipeline(make_column_transformer((OneHotEncoder(), ["plan"]), remainder=StandardScaler()),
                          LogisticRegression()).fit(x, y)
    version, _ = register_winner(clean_stack, "job-drift-1", "drift-plans", {"params": {"algorithm": "logreg"}},
                                 model, x, {"metric": "roc_auc", "value": 0.9, "ci95": [0.88, 0.92]}, {})
    reference = drift.load_reference(clean_stack, "drift-plans", version)
    assert set(reference["numeric"]) == {"usage", "seats"} and set(reference["categorical"]) == {"plan"}
    assert reference["categorical"]["plan"]["n"] == 3000 and reference["score"]["n"] == 3000
    governance.promote(clean_stack, "drift-plans", version, reason="test")

    serve(clean_stack, "drift-plans", plans(SERVED, seed=2))
    (check,) = [c for c in monitor(receiver)["checks"] if c["model"] == "drift-plans"]
    assert (check["status"], check["drifted"], check["samples"]) == ("ok", False, SERVED)

    serve(clean_stack, "drift-plans", plans(3 * SERVED, seed=3, business=0.65))  # business customers flood in
    (check,) = [c for c in monitor(receiver)["checks"] if c["model"] == "drift-plans"]
    assert check["drifted"] and "plan" in check["drifted_features"]
    assert {"usage", "seats"}.isdisjoint(check["drifted_features"])
    latest = drift.history(clean_stack, "drift-plans")[0]
    assert latest["samples"] == 4 * SERVED and latest["aliases"] == ["champion"]
    assert {f["name"]: f for f in latest["features"]}["plan"]["chi2_p"] < 0.05
    assert any(b["kind"] == "drift" and b["subject"] == f"model:drift-plans:v{version}" for b in receiver.bodies)
