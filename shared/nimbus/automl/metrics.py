"""The metrics AutoML optimises and reports: one declaration each — name, task, direction, the
scikit-learn scorer the search ranks with, and how the held-out value is computed.

Scores inside the search are scikit-learn's "greater is better" scorers (``neg_...`` for errors);
:func:`sign` turns them back into the metric's own value for people.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from nimbus.automl.profile import Task
from nimbus.errors import InvalidInput


@dataclass(frozen=True)
class Metric:
    name: str
    task: Task
    compute: Callable[[np.ndarray, np.ndarray, np.ndarray | None, Any], float]  # (y, predicted, proba, classes)
    lower_is_better: bool = False
    scorer: str | None = None  # scikit-learn's scorer name when it is not the metric's own
    proba: bool = False  # computed from predicted probabilities
    offered: bool = True  # a request may name it (roc_auc_ovr is what roc_auc becomes on many classes)


def _sk(name: str, **kw: Any) -> Callable[[np.ndarray, np.ndarray, np.ndarray | None, Any], float]:
    def compute(y: np.ndarray, predicted: np.ndarray, proba: np.ndarray | None, classes: Any) -> float:
        from sklearn import metrics

        return float(getattr(metrics, name)(y, predicted, **kw))
    return compute


def _roc_auc(y: np.ndarray, predicted: np.ndarray, proba: np.ndarray | None, classes: Any) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y == classes[1], proba[:, 1]))  # the positive class: the second label


def _roc_auc_ovr(y: np.ndarray, predicted: np.ndarray, proba: np.ndarray | None, classes: Any) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, proba, multi_class="ovr", labels=classes))


def _log_loss(y: np.ndarray, predicted: np.ndarray, proba: np.ndarray | None, classes: Any) -> float:
    from sklearn.metrics import log_loss

    return float(log_loss(y, proba, labels=classes))


def _rmse(y: np.ndarray, predicted: np.ndarray, proba: np.ndarray | None, classes: Any) -> float:
    from sklearn.metrics import mean_squared_error

    return float(np.sqrt(mean_squared_error(y, predicted)))


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("accuracy", "classification", _sk("accuracy_score")),
    Metric("balanced_accuracy", "classification", _sk("balanced_accuracy_score")),
    Metric("f1_macro", "classification", _sk("f1_score", average="macro")),
    Metric("roc_auc", "classification", _roc_auc, proba=True),
    Metric("roc_auc_ovr", "classification", _roc_auc_ovr, proba=True, offered=False),
    Metric("log_loss", "classification", _log_loss, lower_is_better=True, scorer="neg_log_loss", proba=True),
    Metric("r2", "regression", _sk("r2_score")),
    Metric("rmse", "regression", _rmse, lower_is_better=True, scorer="neg_root_mean_squared_error"),
    Metric("mae", "regression", _sk("mean_absolute_error"), lower_is_better=True, scorer="neg_mean_absolute_error"),
)}
DEFAULT: dict[Task, str] = {"classification": "roc_auc", "regression": "r2"}


def check_metric(task: Task, metric: str | None, classes: int) -> str:
    """The metric a job optimises: the request's (it must fit the task) or the task's default;
    roc_auc on more than two classes is one-vs-rest."""
    metric = metric or DEFAULT[task]
    allowed = [m.name for m in METRICS.values() if m.task == task and m.offered]
    if metric not in allowed:
        raise InvalidInput(f"metric {metric!r} does not fit a {task} task; use one of {', '.join(allowed)}")
    if metric == "roc_auc" and classes > 2:
        return "roc_auc_ovr"
    return metric


def scorer_name(metric: str) -> str:
    """scikit-learn's scorer (greater is better) for ``metric``."""
    return METRICS[metric].scorer or metric


def sign(metric: str) -> int:
    """-1 for a metric where lower is better: its scorer's values are negated."""
    return -1 if METRICS[metric].lower_is_better else 1


def score(metric: str, y: np.ndarray, predicted: np.ndarray, proba: np.ndarray | None, classes: Any) -> float:
    """The metric's own value (not a scorer's: rmse is positive)."""
    return METRICS[metric].compute(y, predicted, proba, classes)
