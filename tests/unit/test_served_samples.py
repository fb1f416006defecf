"""A served prediction's score (one rule for serving and for the training reference) and what predict's
sampler keeps, without a backend: the rows a flush would write are drained from the buffer."""

from __future__ import annotations

import math
import random

import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline

from nimbus.config import Settings
from nimbus.monitoring.drift import compare
from nimbus.serving.forms import Estimator
from nimbus.serving.models import ServedModel
from nimbus.serving.samples import (
    PredictionSampler,
    class_scores,
    sample_row,
    score_of,
    training_reference,
    training_scores,
)
from nimbus.serving.signature import Signature
from nimbus.stores.redis.live import LiveModelStore

NOWHERE = "redis://127.0.0.1:9/0"  # never reached: these tests drain the buffer instead of flushing it


@pytest.mark.parametrize(("prediction", "score"), [
    ({"label": 1, "probabilities": {"0": 0.3, "1": 0.7}}, 0.7),  # binary: the last class
    ({"label": 0, "probabilities": {"0": 0.8, "1": 0.2}}, 0.2),
    ({"label": "b", "probabilities": {"a": 0.1, "b": 0.6, "c": 0.3}}, 0.6),  # multiclass: the top one
    ({"value": 12.5}, 12.5),
    ({"value": 3}, 3.0),
    ({"value": "high"}, None),  # a pyfunc model's non-number: no score
    ({"value": True}, None),
    ({"value": [1.0, 2.0]}, None),
    ({"value": {"a": 1}}, None),
    ({"value": None}, None),
    ({"value": math.nan}, None),
])
def test_score_of_one_prediction(prediction: dict, score: float | None) -> None:
    assert score_of(prediction) == score


def frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x": rng.normal(size=n), "k": rng.integers(0, 5, n).astype(np.int64),
                         "city": rng.choice(["paris", "lyon", "nice"], n), "vip": rng.random(n) < 0.3})


def served(model, x: pd.DataFrame, kind: str) -> ServedModel:
    signature = Signature.from_specs([("x", "double", True), ("k", "long", True)])
    classes = tuple(model.classes_.tolist()) if kind == "classifier" else ()
    return ServedModel("m", "1", kind, signature, Estimator(model, signature.names, kind == "classifier"), classes)


@pytest.mark.parametrize("classes", [2, 3])
def test_the_reference_scores_a_classifier_as_serving_scores_its_answers(classes: int) -> None:
    x = frame(200)[["x", "k"]]
    y = (x["x"] > 0).astype(int) + (x["k"] > 2 if classes == 3 else 0)
    model = LogisticRegression().fit(x, y)
    answers = served(model, x, "classifier").predict(x.to_dict("records"))
    np.testing.assert_allclose([score_of(a) for a in answers], training_scores(model, x), rtol=0, atol=1e-12)
    expected = model.predict_proba(x)[:, 1] if classes == 2 else model.predict_proba(x).max(axis=1)
    np.testing.assert_allclose(class_scores(model.predict_proba(x)), expected)


def test_the_reference_scores_a_regressor_by_its_value() -> None:
    x = frame(100)[["x", "k"]]
    model = Ridge().fit(x, 2 * x["x"] - x["k"])
    answers = served(model, x, "regressor").predict(x.to_dict("records"))
    np.testing.assert_allclose([score_of(a) for a in answers], training_scores(model, x), rtol=1e-12)


def test_a_training_reference_bins_numbers_counts_categories_and_skips_dates() -> None:
    x = frame(500).assign(seen=pd.date_range("2024-01-01", periods=500, freq="h"))
    x["seen_text"] = x["seen"].dt.strftime("%Y-%m-%d %H:%M")  # dates as a CSV gives them: text, 500 values
    model = make_pipeline(make_column_transformer(("passthrough", ["x", "k"])), LogisticRegression())
    model.fit(x, x["x"] > 0)
    reference = training_reference(model, x)
    assert set(reference["numeric"]) == {"x", "k"} and set(reference["categorical"]) == {"city", "vip"}
    assert reference["categorical"]["vip"]["counts"].keys() == {"True", "False"}
    assert reference["categorical"]["city"]["n"] == 500 and reference["score"]["n"] == 500


def test_a_sampled_row_is_what_drift_compares() -> None:
    row = sample_row("7", {"x": 0.5, "k": 3, "city": "nice", "vip": False, "gone": None},
                     {"label": 1, "probabilities": {"0": 0.1, "1": 0.9}}, 1795685400.0)
    assert row == {"ts": 1795685400.0, "model_version": "7", "features": {"x": 0.5, "k": 3},
                   "categorical": {"city": "nice", "vip": "False"}, "score": 0.9}
    x = frame(400)
    model = LogisticRegression().fit(x[["x", "k"]], x["x"] > 0)
    reference = training_reference(model, x[["x", "k"]])
    rows = [sample_row("1", r, {"value": s}, 0.0) for r, s in
            zip(x[["x", "k"]].to_dict("records"), training_scores(model, x[["x", "k"]]), strict=True)]
    result = compare(reference, rows, Settings())
    assert {f["name"] for f in result["features"]} == {"x", "k"} and not result["drifted"]


def drained(sampler: PredictionSampler) -> dict[str, list[dict]]:
    return {m: [orjson.loads(r) for r in rows] for m, rows in sampler.buffer.drain(10**6).items()}


def test_every_record_is_kept_at_rate_one_and_none_at_rate_zero() -> None:
    records = [{"x": float(i), "city": "paris"} for i in range(5)]
    predictions = [{"value": float(i)} for i in range(5)]
    everything = PredictionSampler(LiveModelStore(NOWHERE), 1.0, flush_s=3600)
    everything.add("a", "2", records, predictions)
    everything.add("b", "1", records[:1], predictions[:1])
    rows = drained(everything)
    assert [r["features"]["x"] for r in rows["a"]] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [r["score"] for r in rows["a"]] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert {r["model_version"] for r in rows["a"]} == {"2"} and len(rows["b"]) == 1
    nothing = PredictionSampler(LiveModelStore(NOWHERE), 0.0, flush_s=3600)
    nothing.add("a", "2", records, predictions)
    assert drained(nothing) == {}
    everything.stop(), nothing.stop()


@pytest.mark.parametrize("size", [1, 7, 300])
def test_a_rate_keeps_that_share_of_records_whatever_the_request_size(size: int) -> None:
    random.seed(size)
    rate, total = 0.02, 120_000
    sampler = PredictionSampler(LiveModelStore(NOWHERE), rate, flush_s=3600)
    records = [{"x": float(i)} for i in range(size)]
    predictions = [{"value": 1.0}] * size
    for _ in range(total // size):
        sampler.add("m", "1", records, predictions)
    kept = drained(sampler)["m"]
    sent = total // size * size
    sigma = math.sqrt(sent * rate * (1 - rate))
    assert abs(len(kept) - sent * rate) < 5 * sigma
    # every position of a request is as likely to be kept (no bias to the first record)
    positions = np.bincount([int(r["features"]["x"]) for r in kept], minlength=size)
    if size > 1:
        assert positions.max() - positions.min() < 6 * math.sqrt(len(kept) / size) + 2
    sampler.stop()
