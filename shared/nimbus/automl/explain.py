"""Per-prediction explanations (SHAP) and the learning curve of an AutoML winner, each within a
time allowance so the job still ends within its budget.

Explanations use ``shap.PermutationExplainer`` on the whole Pipeline (model-agnostic: the same
for every algorithm, in the user's own columns, in probability space for classifiers). Shap's
maskers compare values numerically, so string and date columns are passed to it as integer
codes and decoded back to the original values before the Pipeline sees them. Measured on a
4-column mixed frame, 20 rows, background 20, one antithetic permutation: 0.15-0.6 s for
logistic, HistGradientBoosting, SVM, k-NN and a 300-tree forest, after a one-time ~5 s
compilation of shap's numba code, which ``warm_up`` does while the search runs.
``TreeExplainer`` is faster for forests (0.05 s) but explains one-hot and indicator columns in
margin space, so it is not used. A permutation explanation is exactly additive:
base value + sum of contributions = prediction.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from nimbus.automl.metrics import scorer_name, sign

EXPLAIN_ROWS = 20
BACKGROUND_ROWS = 20
TOP_FEATURES = 5
MAX_PERMUTATIONS = 10
CURVE_SIZES = (0.2, 0.4, 0.7, 1.0)
CURVE_FOLDS = 3
CURVE_MAX_ROWS = 5000


def warm_up() -> None:
    """Import shap, skl2onnx and onnxruntime and compile shap's numba code once per process."""
    import onnxruntime  # noqa: F401
    import shap
    import skl2onnx  # noqa: F401

    data = np.arange(6, dtype=float).reshape(3, 2)
    shap.PermutationExplainer(lambda a: a.sum(axis=1), shap.maskers.Independent(data))(data[:1], max_evals=5,
                                                                                      silent=True)


class _Codes:
    """Columns as numbers for shap: numbers stay, other values become codes into a table."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.columns = list(frame.columns)
        self.dtypes = frame.dtypes
        self.tables: dict[str, np.ndarray] = {}
        for column in self.columns:
            if not pd.api.types.is_numeric_dtype(frame[column]):
                self.tables[column] = np.asarray(pd.unique(frame[column].dropna()), dtype=object)

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        out = np.empty((len(frame), len(self.columns)))
        for i, column in enumerate(self.columns):
            if column in self.tables:
                lookup = {v: n for n, v in enumerate(self.tables[column])}
                out[:, i] = [lookup.get(v, -1) if not pd.isna(v) else -1 for v in frame[column]]
            else:
                out[:, i] = frame[column].astype(float)
        return out

    def decode(self, array: np.ndarray) -> pd.DataFrame:
        frame = pd.DataFrame(array, columns=self.columns)
        for column, table in self.tables.items():
            codes = frame[column].to_numpy().astype(int)
            frame[column] = pd.Series(np.where(codes >= 0, table[np.clip(codes, 0, None)], np.nan), dtype=object)
        for column in self.columns:
            if column not in self.tables:
                frame[column] = frame[column].astype(self.dtypes[column])
        return frame


def explain(model: Any, task: str, x_train: pd.DataFrame, x_rows: pd.DataFrame, seconds: float,
            rows: int = EXPLAIN_ROWS, background: int = BACKGROUND_ROWS, seed: int = 0) -> dict[str, Any]:
    """SHAP values of up to ``rows`` rows of ``x_rows``, spending at most about ``seconds``."""
    import shap

    start = time.monotonic()
    base = x_train.sample(min(background, len(x_train)), random_state=seed)
    picked = x_rows.iloc[:rows]
    codes = _Codes(pd.concat([base, picked]))
    classify = task == "classification"

    def predict(array: np.ndarray) -> np.ndarray:
        frame = codes.decode(array)
        return model.predict_proba(frame) if classify else model.predict(frame)

    width = 2 * len(codes.columns) + 1  # evaluations of one antithetic permutation
    probe = np.repeat(codes.encode(base), width, axis=0)
    clock = time.monotonic()
    predict(probe)
    per_row = (time.monotonic() - clock) * 1.5 + 1e-3  # a permutation of one row, at the least
    left = seconds - (time.monotonic() - start)
    if left < per_row:
        return {"skipped": f"no time left in the job's budget ({max(left, 0):.1f} s left, a row needs "
                           f"{per_row:.2f} s)"}
    explainer = shap.PermutationExplainer(predict, shap.maskers.Independent(codes.encode(base),
                                                                            max_samples=len(base)), seed=seed)
    # One permutation of the first row, timed, is what a permutation costs here: shap's own calls
    # (a fixed cost per model call: an ensemble of pipelines paid it many times) and the model's.
    clock = time.monotonic()
    explainer(codes.encode(picked.iloc[[0]]), max_evals=width, silent=True)
    per_row = max(per_row, time.monotonic() - clock)
    left = seconds - (time.monotonic() - start)
    count = min(len(picked), int(left / per_row))
    if count < 1:
        return {"skipped": f"no time left in the job's budget ({max(left, 0):.1f} s left, a row needs "
                           f"{per_row:.2f} s)"}
    permutations = max(1, min(MAX_PERMUTATIONS, int(left / (per_row * count))))
    explained, values = [], []
    for n in range(count):  # a row at a time: none is started that would end after the allowance
        if explained and time.monotonic() - start + per_row * permutations > seconds:
            break
        values.append(explainer(codes.encode(picked.iloc[[n]]), max_evals=permutations * width, silent=True))
        explained.append(n)
    explained = picked.iloc[explained]
    count = len(explained)
    predictions = predict(codes.encode(explained))
    out_rows = []
    for n in range(count):
        contributions, base_value, prediction = values[n].values[0], values[n].base_values[0], predictions[n]
        row: dict[str, Any] = {"row": _plain(explained.index[n])}
        if classify:
            k = int(np.argmax(prediction))
            contributions, base_value, prediction = contributions[:, k], base_value[k], prediction[k]
            row["class"] = _plain(model.classes_[k])
        order = np.argsort(-np.abs(contributions))
        top = order[:TOP_FEATURES]
        row.update({"base_value": float(base_value), "prediction": float(prediction),
                    "contributions": [{"feature": str(codes.columns[i]), "value": _plain(explained.iloc[n, i]),
                                       "contribution": float(contributions[i])} for i in top],
                    "others": float(contributions[order[TOP_FEATURES:]].sum())})
        out_rows.append(row)
    return {"method": "shap.PermutationExplainer on the whole pipeline (original columns)",
            "shap_version": shap.__version__,
            "output": "probability of the predicted class" if classify else "predicted value",
            "background_rows": len(base), "permutations": permutations, "rows": out_rows,
            "seconds": round(time.monotonic() - start, 3)}


def learning_curve(model: Any, x_train: pd.DataFrame, y_train: pd.Series, metric: str, task: str,
                   fit_s: float, seconds: float, seed: int = 0) -> dict[str, Any]:
    """Cross-validated score against training rows, on at most ``CURVE_MAX_ROWS`` rows and sized
    from the refit's own time (``fit_s`` on all of ``x_train``) to fit in ``seconds``."""
    from sklearn.base import clone
    from sklearn.model_selection import learning_curve as sk_learning_curve

    start = time.monotonic()
    rows = min(len(x_train), CURVE_MAX_ROWS)
    if rows < len(x_train):
        from sklearn.model_selection import train_test_split

        x, _, y, _ = train_test_split(x_train, y_train, train_size=rows, random_state=seed,
                                      stratify=y_train if task == "classification" and _stratifiable(y_train, rows)
                                      else None)
    else:
        x, y = x_train, y_train
    # one size at a time, smallest first, each only when its estimated cost (the last size's
    # measured time, or the refit's, scaled by rows) fits in what is left
    per_row = fit_s / max(1, len(x_train)) * CURVE_FOLDS * 1.5
    points, reason = [], None
    for share in CURVE_SIZES:
        left = seconds - (time.monotonic() - start)
        size = int(share * rows * (CURVE_FOLDS - 1) / CURVE_FOLDS)
        if size * per_row > left:
            reason = f"stopped at {len(points)} of {len(CURVE_SIZES)} sizes: the next needs about " \
                     f"{size * per_row:.1f} s, {max(left, 0):.1f} s were left in the job's budget"
            break
        clock = time.monotonic()
        sizes, train, valid, fit_times, _ = sk_learning_curve(
            clone(model), x, y, train_sizes=[share], cv=CURVE_FOLDS, scoring=scorer_name(metric), shuffle=True,
            random_state=seed, error_score=np.nan, return_times=True)
        per_row = (time.monotonic() - clock) / max(1, int(sizes[0])) * 1.2
        direction = sign(metric)
        points.append({"train_rows": int(sizes[0]), "train_score": _mean(direction * train),
                       "validation_score": _mean(direction * valid), "validation_std": _finite(np.nanstd(valid)),
                       "fit_s": _mean(fit_times)})
    if not points:
        return {"skipped": reason}
    out = {"metric": metric, "rows": len(x), "folds": CURVE_FOLDS, "points": points,
           "seconds": round(time.monotonic() - start, 3)}
    if reason:
        out["note"] = reason
    return out


def _stratifiable(y: pd.Series, rows: int) -> bool:
    counts = y.value_counts()
    return counts.min() >= 2 and len(counts) <= rows // 2


def _mean(values: np.ndarray) -> float | None:
    return _finite(np.nanmean(values)) if np.isfinite(values).any() else None


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _plain(value: Any) -> Any:
    """A JSON-friendly scalar (numpy scalars and NaN made plain)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
