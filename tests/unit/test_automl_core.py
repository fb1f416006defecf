"""AutoML's pure parts: profiling decisions, the search space, held-out metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes, load_digits
from sklearn.ensemble import ExtraTreesClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import get_scorer

from nimbus.automl.algorithms import choose
from nimbus.automl.evaluation import evaluate
from nimbus.automl.metrics import check_metric, scorer_name
from nimbus.automl.profile import infer_task, profile
from nimbus.automl.space import pipeline
from nimbus.errors import InvalidInput


@pytest.mark.parametrize("metric", ["accuracy", "balanced_accuracy", "f1_macro", "roc_auc_ovr", "log_loss"])
def test_held_out_metrics_equal_scikit_learns_scorers(metric: str) -> None:
    d = load_digits(as_frame=True).frame
    x, y = d.drop(columns=["target"]), d["target"]
    model = ExtraTreesClassifier(30, random_state=0).fit(x[:1200], y[:1200])
    sign = -1 if metric == "log_loss" else 1
    expected = sign * get_scorer(scorer_name(metric))(model, x[1200:], y[1200:])
    result = evaluate(model, x[1200:], y[1200:], metric, rounds=50)
    assert result["value"] == pytest.approx(expected)
    assert result["ci95"][0] <= result["value"] <= result["ci95"][1]


@pytest.mark.parametrize("metric", ["r2", "rmse", "mae"])
def test_regression_metrics_equal_scikit_learns_scorers(metric: str) -> None:
    d = load_diabetes(as_frame=True).frame
    x, y = d.drop(columns=["target"]), d["target"]
    model = Ridge().fit(x[:300], y[:300])
    sign = -1 if metric in ("rmse", "mae") else 1
    assert evaluate(model, x[300:], y[300:], metric, rounds=20)["value"] == pytest.approx(
        sign * get_scorer(scorer_name(metric))(model, x[300:], y[300:]))


def test_binary_roc_auc_uses_the_positive_class() -> None:
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(400, 3)), columns=list("abc"))
    y = pd.Series(np.where(x["a"] + rng.normal(size=400) * 0.5 > 0, "yes", "no"))
    model = LogisticRegression().fit(x[:300], y[:300])
    assert evaluate(model, x[300:], y[300:], "roc_auc", rounds=10)["value"] == pytest.approx(
        get_scorer("roc_auc")(model, x[300:], y[300:]))


def test_profiling_finds_kinds_drops_identifiers_and_infers_the_task() -> None:
    n = 200
    frame = pd.DataFrame({
        "id": [f"cust-{i}" for i in range(n)], "age": np.arange(n) % 70, "plan": ["a", "b", "c", "d"] * 50,
        "since": pd.date_range("2024-01-01", periods=n).strftime("%Y-%m-%d"), "constant": 1,
        "churn": [0, 1] * 100,
    })
    prof = profile(frame, "churn")
    assert prof.task == "classification" and prof.classes == 2
    assert prof.numeric == ["age"] and prof.categorical == ["plan"] and prof.datetime == ["since"]
    assert "identifier" in prof.dropped["id"] and prof.dropped["constant"] == "constant"
    model = pipeline({"algorithm": "logistic", "C": 1.0}, prof).fit(frame.drop(columns=["churn"]), frame["churn"])
    assert model.predict(frame.drop(columns=["churn"]).head(3)).shape == (3,)
    assert infer_task(pd.Series(np.linspace(0, 1, 50))) == "regression"


def test_metric_and_algorithm_choices_are_checked() -> None:
    assert check_metric("classification", None, 2) == "roc_auc"
    assert check_metric("classification", "roc_auc", 5) == "roc_auc_ovr"
    with pytest.raises(InvalidInput, match="does not fit a regression"):
        check_metric("regression", "accuracy", 0)
    prof = profile(pd.DataFrame({"x": range(30_000), "y": [0.5, 1.5, 2.25] * 10_000}), "y")
    pool = choose(prof)
    assert "svm" not in pool and "ridge" in pool  # kernel SVMs only on small data
    with pytest.raises(InvalidInput, match="no algorithm left"):
        choose(prof, include=["ridge"], exclude=["ridge"])
