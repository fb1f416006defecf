"""The refit model on the held-out rows: the job's metric with a bootstrap interval, and which
features it leans on (permutation importances)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from nimbus.automl.metrics import METRICS, score, scorer_name

BOOTSTRAP_ROUNDS = 200
IMPORTANCE_ROWS = 1000  # bounded cost: the refit already spent most of the reserve


def evaluate(model: Any, x: pd.DataFrame, y: pd.Series, metric: str, rounds: int = BOOTSTRAP_ROUNDS) -> dict[str, Any]:
    """The held-out metric with a 95% bootstrap interval (the model predicts once; the metric is resampled)."""
    truth = np.asarray(y)
    predicted = model.predict(x)
    proba = model.predict_proba(x) if METRICS[metric].proba else None
    classes = getattr(model, "classes_", None)
    value = score(metric, truth, predicted, proba, classes)
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(rounds):
        rows = rng.integers(0, len(truth), len(truth))
        try:
            samples.append(score(metric, truth[rows], predicted[rows], None if proba is None else proba[rows], classes))
        except ValueError:  # a resample missing a class: skip it
            continue
    low, high = np.percentile(samples, [2.5, 97.5]) if samples else (value, value)
    return {"metric": metric, "value": value, "ci95": [float(low), float(high)], "rows": len(truth)}


def permutation_importances(model: Any, x: pd.DataFrame, y: pd.Series, metric: str) -> list[dict[str, Any]]:
    from sklearn.inspection import permutation_importance

    sample = min(len(x), IMPORTANCE_ROWS)
    result = permutation_importance(model, x.iloc[:sample], y.iloc[:sample], scoring=scorer_name(metric),
                                    n_repeats=3, random_state=0)
    order = np.argsort(-result.importances_mean)
    return [{"feature": str(x.columns[i]), "importance": float(result.importances_mean[i]),
             "std": float(result.importances_std[i])} for i in order]
