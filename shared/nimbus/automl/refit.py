"""Refitting the searched winner on more data than the search saw.

When every training row fits the memory budget, the winner is refit on all of them in
memory. When they do not, the training rows are streamed in chunks through an incremental
linear model (``SGDClassifier``/``SGDRegressor`` and ``partial_fit``) behind the
preprocessing fitted on the in-memory sample; a non-linear winner is also refit on that
sample, and the validation rows (drawn in the same pass, used by neither) pick between the
two. Either way the result is a scikit-learn Pipeline that carries its preprocessing, and
``info`` says which model was refit on how many rows, and whether it is not the searched one.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from nimbus.automl import algorithms
from nimbus.automl.data import Scan, training_chunks
from nimbus.automl.metrics import scorer_name, sign
from nimbus.automl.profile import Profile
from nimbus.automl.space import pipeline, preprocessor
from nimbus.config import Settings

MAX_EPOCHS = 5  # passes over the training chunks when time allows (small data over a tiny budget)


def incremental_estimator(params: dict[str, Any], task: str, rows: int, seed: int = 0) -> Any:
    """The SGD model matching a linear winner's regularisation (its declared ``incremental``);
    scikit-learn's defaults for any other winner."""
    from sklearn.linear_model import SGDClassifier, SGDRegressor

    declared = algorithms.get(params["algorithm"]).incremental
    if declared is not None:
        return declared(params, task, rows, seed)
    if task == "classification":
        return SGDClassifier(loss="log_loss", alpha=1e-4, average=True, random_state=seed)
    return SGDRegressor(average=True, random_state=seed)


def refit(settings: Settings, scan: Scan, params: dict[str, Any], prof: Profile, metric: str,
          deadline: float, passes: int = MAX_EPOCHS, max_rows: int | None = None) -> tuple[Any, dict[str, Any]]:
    """The model to export and what was done to get it; ``deadline`` (time.monotonic) bounds the
    chunk passes, of which there are ``passes`` at most; ``max_rows`` (what the time left allows)
    bounds the in-memory refit, on a stratified slice of the sample.

    One thread, as in the trials: the time left was planned from their speed, and OpenMP
    threads on a busy machine measured 7 to 40 times slower (HistGradientBoosting, 15k rows)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return _refit(settings, scan, params, prof, metric, deadline, passes, max_rows)


def _refit(settings: Settings, scan: Scan, params: dict[str, Any], prof: Profile, metric: str,
           deadline: float, passes: int, max_rows: int | None) -> tuple[Any, dict[str, Any]]:
    target = scan.target
    train = scan.training() if max_rows is None else scan.search_sample(max_rows)
    x, y = train.drop(columns=[target]), train[target]
    searched = params["algorithm"]
    if scan.fits:
        start = time.monotonic()
        model = pipeline(params, prof).fit(x, y)
        return model, {"model": searched, "estimator": type(model[-1]).__name__, "rows": len(x),
                       "fit_s": round(time.monotonic() - start, 3),
                       "training_rows": scan.train_rows, "incremental": False, "differs_from_winner": False,
                       "limited_by_time": len(x) < scan.train_rows}
    candidates: dict[str, tuple[Any, dict[str, Any]]] = {}
    if not algorithms.get(searched).linear:  # the winner itself, on as much as memory holds
        model = pipeline(params, prof).fit(x, y)
        candidates["in_memory"] = (model, {"model": searched, "estimator": type(model[-1]).__name__,
                                           "rows": len(x), "incremental": False, "differs_from_winner": False})
    model, info = fit_incremental(settings, scan, params, prof, x, deadline, passes)
    candidates["incremental"] = (model, info)
    scores = {name: _score(m, scan, metric) for name, (m, _) in candidates.items()}
    best = max(scores, key=scores.get)
    model, info = candidates[best]
    return model, {**info, "training_rows": scan.train_rows, "searched": searched,
                   "validation": {"rows": len(scan.valid), "metric": metric,
                                  "scores": {name: sign(metric) * s for name, s in scores.items()}}}


def fit_incremental(settings: Settings, scan: Scan, params: dict[str, Any], prof: Profile, x_sample: Any,
                    deadline: float, passes: int = MAX_EPOCHS) -> tuple[Any, dict[str, Any]]:
    """Preprocessing fitted on the sample, then ``partial_fit`` over the training chunks until the
    deadline (``passes`` passes at most); a Pipeline that predicts on raw rows."""
    from sklearn.pipeline import Pipeline

    prep = preprocessor(prof).fit(x_sample)
    estimator = incremental_estimator(params, prof.task, scan.train_rows)
    classes = _classes(scan) if prof.task == "classification" else None
    rows = seen = chunks = epochs = 0  # rows: distinct training rows read; seen: counting repeat passes
    stopped = False
    while epochs < passes and not stopped:
        started = time.monotonic()
        for frame in training_chunks(settings, scan):
            if time.monotonic() >= deadline and seen:
                stopped = True
                break
            features = prep.transform(frame.drop(columns=[scan.target]))
            extra = {"classes": classes} if classes is not None else {}
            estimator.partial_fit(features, frame[scan.target], **extra)
            seen += len(frame)
            rows += len(frame) if epochs == 0 else 0
            chunks += 1
        else:
            epochs += 1
            stopped = time.monotonic() + (time.monotonic() - started) > deadline  # another pass would not fit
    model = Pipeline([("prep", prep), ("model", estimator)])
    matching = " (matching the winner regularisation)" if algorithms.get(params["algorithm"]).linear else ""
    return model, {"model": f"sgd_{'classifier' if classes is not None else 'regressor'}",
                   "estimator": type(estimator).__name__, "rows": rows, "rows_seen": seen, "chunks": chunks,
                   "full_passes": epochs, "incremental": True, "differs_from_winner": True,
                   "why": "the training rows do not fit the memory budget (automl_memory_mb); an incremental "
                          f"learner read them in chunks{matching}"}


def _classes(scan: Scan) -> np.ndarray:
    """Every class, known before the first chunk (``partial_fit`` needs them all at once)."""
    if scan.class_counts is not None:  # exact, from the sampling pass
        return np.array(list(scan.class_counts))
    return np.unique(scan.train[scan.target].to_numpy())


def _score(model: Any, scan: Scan, metric: str) -> float:
    from sklearn.metrics import get_scorer

    valid = scan.valid
    return float(get_scorer(scorer_name(metric))(model, valid.drop(columns=[scan.target]), valid[scan.target]))
