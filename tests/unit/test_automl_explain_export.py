"""SHAP explanations, learning curve and ONNX export of AutoML winners: real fitted pipelines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nimbus.automl.explain import explain, learning_curve
from nimbus.automl.export import predict_onnx, to_onnx, to_onnx_within
from nimbus.automl.profile import profile
from nimbus.automl.space import pipeline


def frame(n: int = 600, dates: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    out = pd.DataFrame({"age": rng.integers(18, 80, n).astype(float), "income": rng.normal(50, 10, n),
                        "plan": rng.choice(["basic", "plus", "pro"], n)})
    out.loc[rng.random(n) < 0.1, "age"] = np.nan  # numeric missing: imputed, with an indicator
    out.loc[rng.random(n) < 0.1, "plan"] = np.nan  # categorical missing: imputed (as read_csv gives it)
    if dates:
        out["since"] = pd.date_range("2020-01-01", periods=n).strftime("%Y-%m-%d")
    out["churn"] = np.where((out["income"] > 50) ^ (out["plan"] == "pro"), "yes", "no")
    out["spend"] = out["income"] * 2 + out["age"].fillna(40) * 0.3 + rng.normal(size=n)
    return out


CLASSIFY = {"logistic": {"C": 1.0}, "random_forest": {"n_estimators": 50, "max_depth": None, "min_samples_leaf": 1,
                                                      "max_features": "sqrt"},
            "hist_gb": {"learning_rate": 0.1, "max_leaf_nodes": 15, "l2_regularization": 1e-3, "max_iter": 30},
            "svm": {"C": 1.0, "gamma": "scale"}, "knn": {"n_neighbors": 10, "weights": "uniform"}}
REGRESS = {"ridge": {"alpha": 1.0}, "extra_trees": {"n_estimators": 30, "max_depth": 8, "min_samples_leaf": 1,
                                                    "max_features": 1.0},
           "hist_gb": {"learning_rate": 0.1, "max_leaf_nodes": 15, "l2_regularization": 1e-3, "max_iter": 30}}


@pytest.fixture(autouse=True, scope="module")
def _warm() -> None:
    """As a job does in a thread from its start: shap's numba code compiled once, not in a test's allowance
    (explain times one real permutation before planning, which would otherwise include the compilation)."""
    from nimbus.automl.explain import warm_up

    warm_up()


def fitted(task: str, algorithm: str, params: dict, dates: bool = False):
    data = frame(dates=dates)
    target, other = ("churn", "spend") if task == "classification" else ("spend", "churn")
    data = data.drop(columns=[other])
    prof = profile(data, target, task)
    x, y = data.drop(columns=[target]), data[target]
    return pipeline({"algorithm": algorithm, **params}, prof).fit(x[:480], y[:480]), prof, x, y


@pytest.mark.parametrize(("task", "algorithm"), [("classification", a) for a in CLASSIFY] +
                         [("regression", a) for a in REGRESS])
def test_shap_contributions_add_up_to_the_prediction(task: str, algorithm: str) -> None:
    params = (CLASSIFY if task == "classification" else REGRESS)[algorithm]
    model, _prof, x, _ = fitted(task, algorithm, params, dates=True)
    result = explain(model, task, x[:480], x[480:], seconds=5, rows=3)
    assert 1 <= len(result["rows"]) <= 3 and result["background_rows"] == 20
    for row in result["rows"]:
        total = row["base_value"] + sum(c["contribution"] for c in row["contributions"]) + row["others"]
        assert total == pytest.approx(row["prediction"], abs=1e-9)  # additivity
        original = x.loc[[row["row"]]]
        if task == "classification":
            proba = model.predict_proba(original)[0]
            assert row["class"] == model.classes_[np.argmax(proba)] and row["prediction"] == pytest.approx(proba.max())
        else:
            assert row["prediction"] == pytest.approx(model.predict(original)[0])
        assert {c["feature"] for c in row["contributions"]} <= set(x.columns)
    # the base value is the mean output over the background rows, whatever the row
    assert len({round(r["base_value"], 9) for r in result["rows"] if r.get("class") == result["rows"][0].get("class")}) == 1


def test_no_time_means_no_explanations_and_a_reason() -> None:
    model, _, x, _ = fitted("classification", "logistic", CLASSIFY["logistic"])
    assert "no time left" in explain(model, "classification", x[:480], x[480:], seconds=0)["skipped"]


def test_learning_curve_scores_grow_with_rows_and_respect_the_time_left() -> None:
    model, _, x, y = fitted("regression", "ridge", REGRESS["ridge"])
    curve = learning_curve(model, x[:480], y[:480], "rmse", "regression", fit_s=0.01, seconds=60)
    rows = [p["train_rows"] for p in curve["points"]]
    assert rows == sorted(rows) and len(rows) == 4 and rows[-1] == 320  # 2/3 of 480 rows train each fold
    assert all(p["validation_score"] > 0 for p in curve["points"])  # rmse in its own sign
    assert curve["points"][0]["validation_score"] >= curve["points"][-1]["validation_score"]
    assert "skipped" in learning_curve(model, x[:480], y[:480], "rmse", "regression", fit_s=10.0, seconds=1)


@pytest.mark.parametrize(("task", "algorithm"), [("classification", "logistic"), ("classification", "knn"),
                                                 ("classification", "svm"), ("regression", "ridge")])
def test_onnx_predicts_like_scikit_learn_with_missing_values_and_categories(task: str, algorithm: str) -> None:
    params = (CLASSIFY if task == "classification" else REGRESS)[algorithm]
    model, prof, x, _ = fitted(task, algorithm, params)
    export = to_onnx(model, prof, x[480:])
    assert export.model is not None, export.error
    outputs = predict_onnx(export.model, x[480:], prof, export.info["numeric_inputs"])
    if task == "classification":
        assert (outputs[0].ravel() == model.predict(x[480:])).all()
        np.testing.assert_allclose(outputs[1], model.predict_proba(x[480:]), atol=1e-3)
    else:
        np.testing.assert_allclose(outputs[0].ravel(), model.predict(x[480:]), rtol=1e-4, atol=1e-3)
    assert x[480:]["age"].isna().any() and x[480:]["plan"].isna().any()  # the check saw missing values


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_native_category_splits_that_onnx_cannot_express_are_refused_not_exported_wrong(task: str) -> None:
    # HistGradientBoosting splits on the categories themselves; skl2onnx converts the trees without
    # those splits, so its predictions differ: the check refuses the export and says why.
    params = (CLASSIFY if task == "classification" else REGRESS)["hist_gb"]
    model, prof, x, _ = fitted(task, "hist_gb", params)
    assert model[-1].categorical_features  # the plan column, natively
    export = to_onnx(model, prof, x[480:])
    assert export.model is None and "differ" in export.error


def test_a_pipeline_that_does_not_convert_gets_a_reason() -> None:
    model, prof, x, _ = fitted("classification", "logistic", CLASSIFY["logistic"], dates=True)
    export = to_onnx(model, prof, x[480:])
    assert export.model is None and "FunctionTransformer" in export.error  # the date parts
    assert "no time left" in to_onnx_within(model, prof, x[480:], 0).error
