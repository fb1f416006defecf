"""The algorithms AutoML searches: one declaration each, read by every module that needs to know one.

An :class:`Algorithm` says its name, the tasks it serves, its hyperparameters (a piece of the
Optuna define-by-run space), how to build its scikit-learn estimator, and what it can do
beyond a plain fit: ``linear`` (a refit over memory can stream it through a matching SGD
model, ``incremental``), ``gpu`` (scikit-learn's array API fits it on a device, see
``gpu.py``), ``onnx`` (skl2onnx converts it, see ``export.py``), and the largest dataset it is
searched on (``max_rows``: kernel SVMs and nearest neighbours scale badly).

Each also declares its ``default``: a strong configuration, as a point of its own space, tried
before the search proposes any. ``quick`` ones (a regularised linear model, a default
HistGradientBoosting) are fitted in the runner itself while Ray starts, so a job has a scored
configuration within seconds; the others' defaults are the search's first trials. ``prep`` says
which preprocessing its estimator takes (``space.preprocessor``): ``"scaled"`` (imputed,
one-hot, standardised) or ``"trees"`` (missing values and categories as they are: HistGradientBoosting
splits on categories natively, forests on their ordinal codes).

scikit-learn is imported when an estimator is built, not when this module is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nimbus.automl.profile import Profile, Task
from nimbus.errors import InvalidInput

BOTH: tuple[Task, ...] = ("classification", "regression")
LARGE_ROWS = 50_000  # over this the ensembles are searched smaller, so one fit cannot eat the budget
HGB_MAX_ITER = 1000


@dataclass(frozen=True)
class Algorithm:
    name: str
    tasks: tuple[Task, ...]
    space: Callable[[Any, int], dict[str, Any]]  # (optuna trial, rows) -> its own parameters
    estimator: Callable[[dict[str, Any], Task, int], Any]  # (parameters, task, seed) -> unfitted estimator
    linear: bool = False
    incremental: Callable[[dict[str, Any], Task, int, int], Any] | None = None  # (params, task, rows, seed) -> SGD
    gpu: Callable[[dict[str, Any]], bool] | None = None  # which configurations fit on a device; None: none
    onnx: bool = True
    max_rows: int | None = None
    default: dict[str, Any] | None = None  # a point of ``space`` (Optuna's parameter names) tried first
    quick: bool = False  # its default is fitted in the runner while Ray starts: the job's first result
    prep: str = "scaled"  # "scaled" or "trees" (space.preprocessor)
    searched: bool = True  # proposed by the search (the ensemble is built from its results instead)

    def on_device(self, params: dict[str, Any]) -> bool:
        return self.gpu is not None and self.gpu(params)


# ---- spaces ------------------------------------------------------------------------------
def _regularised(name: str, key: str) -> Callable[[Any, int], dict[str, Any]]:
    return lambda trial, rows: {key: trial.suggest_float(f"{name}_reg", 1e-3, 1e2, log=True)}


def _elastic_net_space(trial: Any, rows: int) -> dict[str, Any]:
    return {"alpha": trial.suggest_float("elastic_net_reg", 1e-3, 1e2, log=True),
            "l1_ratio": trial.suggest_float("l1_ratio", 0.05, 0.95)}


def _forest_space(name: str) -> Callable[[Any, int], dict[str, Any]]:
    def space(trial: Any, rows: int) -> dict[str, Any]:
        return {"n_estimators": trial.suggest_int(f"{name}_trees", 50, 300 if rows <= LARGE_ROWS else 100, step=50),
                "max_depth": trial.suggest_categorical(f"{name}_depth", [None, 6, 12, 20]),
                "min_samples_leaf": trial.suggest_int(f"{name}_leaf", 1, 10),
                "max_features": trial.suggest_categorical(f"{name}_features", ["sqrt", 0.5, 1.0])}
    return space


def _hist_gb_space(trial: Any, rows: int) -> dict[str, Any]:
    # the number of trees is not searched: early stopping on a validation share ends each fit
    return {"learning_rate": trial.suggest_float("hgb_lr", 0.01, 0.3, log=True),
            "max_leaf_nodes": trial.suggest_int("hgb_leaves", 4, 128, log=True),
            "min_samples_leaf": trial.suggest_int("hgb_min_leaf", 2, 100, log=True),
            "l2_regularization": trial.suggest_float("hgb_l2", 1e-6, 10.0, log=True),
            "max_features": trial.suggest_float("hgb_features", 0.3, 1.0)}


def _knn_space(trial: Any, rows: int) -> dict[str, Any]:
    return {"n_neighbors": trial.suggest_int("knn_k", 3, 50, log=True),
            "weights": trial.suggest_categorical("knn_weights", ["uniform", "distance"])}


def _svm_space(trial: Any, rows: int) -> dict[str, Any]:
    return {"C": trial.suggest_float("svm_C", 1e-2, 1e2, log=True),
            "gamma": trial.suggest_categorical("svm_gamma", ["scale", "auto"])}


def _lda_space(trial: Any, rows: int) -> dict[str, Any]:
    return {"solver": trial.suggest_categorical("lda_solver", ["svd", "lsqr"])}


# ---- estimators ----------------------------------------------------------------------------
def _logistic(kw: dict[str, Any], task: Task, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, **kw)


def _ridge(kw: dict[str, Any], task: Task, seed: int) -> Any:
    from sklearn.linear_model import Ridge

    return Ridge(**kw)


def _elastic_net(kw: dict[str, Any], task: Task, seed: int) -> Any:
    from sklearn.linear_model import ElasticNet

    return ElasticNet(max_iter=5000, **kw)


def _random_forest(kw: dict[str, Any], task: Task, seed: int) -> Any:
    from sklearn import ensemble

    cls = ensemble.RandomForestClassifier if task == "classification" else ensemble.RandomForestRegressor
    return cls(random_state=seed, n_jobs=1, **kw)


def _extra_trees(kw: dict[str, Any], task: Task, seed: int) -> Any:
    from sklearn import ensemble

    cls = ensemble.ExtraTreesClassifier if task == "classification" else ensemble.ExtraTreesRegressor
    return cls(random_state=seed, n_jobs=1, **kw)


def _hist_gb(kw: dict[str, Any], task: Task, seed: int) -> Any:
    from sklearn import ensemble

    cls = ensemble.HistGradientBoostingClassifier if task == "classification" \
        else ensemble.HistGradientBoostingRegressor
    # Early stopping on 10% of the rows, patient enough for small learning rates; the cap on trees
    # is rarely reached (a fit stops when 20 more trees no longer improve the validation loss).
    return cls(**{"random_state": seed, "early_stopping": True, "max_iter": HGB_MAX_ITER, "n_iter_no_change": 20, **kw})


def _knn(kw: dict[str, Any], task: Task, seed: int) -> Any:
    from sklearn import neighbors

    return (neighbors.KNeighborsClassifier if task == "classification" else neighbors.KNeighborsRegressor)(**kw)


def _svm(kw: dict[str, Any], task: Task, seed: int) -> Any:
    from sklearn import svm

    if task == "regression":
        return svm.SVR(**kw)
    # Probabilities by Platt scaling on cross-validated decision values, as SVC(probability=True) did
    # (deprecated in scikit-learn 1.9; this is its documented replacement)
    from sklearn.calibration import CalibratedClassifierCV

    return CalibratedClassifierCV(svm.SVC(random_state=seed, **kw), ensemble=False)


def _lda(kw: dict[str, Any], task: Task, seed: int) -> Any:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    return LinearDiscriminantAnalysis(**kw)


# ---- incremental counterparts (the same objective up to scale) -------------------------------
def _sgd_logistic(params: dict[str, Any], task: Task, rows: int, seed: int) -> Any:
    from sklearn.linear_model import SGDClassifier

    return SGDClassifier(loss="log_loss", alpha=1.0 / (params["C"] * max(1, rows)), average=True, random_state=seed)


def _sgd_ridge(params: dict[str, Any], task: Task, rows: int, seed: int) -> Any:
    from sklearn.linear_model import SGDRegressor

    # Ridge: |y - Xw|^2 + a|w|^2; SGD: mean of half squares + alpha/2 |w|^2
    return SGDRegressor(alpha=params["alpha"] / max(1, rows), average=True, random_state=seed)


def _sgd_elastic_net(params: dict[str, Any], task: Task, rows: int, seed: int) -> Any:
    from sklearn.linear_model import SGDRegressor

    # ElasticNet and SGD share the objective
    return SGDRegressor(penalty="elasticnet", alpha=params["alpha"], l1_ratio=params["l1_ratio"], average=True,
                        random_state=seed)


def _ensemble(kw: dict[str, Any], task: Task, seed: int) -> Any:
    raise TypeError("an ensemble is built from its members' pipelines (space.pipeline), not as one estimator")


def _no_space(trial: Any, rows: int) -> dict[str, Any]:
    raise TypeError("the ensemble is not searched: ensemble.py builds it from the search's best configurations")


def _always(params: dict[str, Any]) -> bool:
    return True


_FOREST = {"depth": None, "leaf": 1, "features": 0.5}
ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("logistic", ("classification",), _regularised("logistic", "C"), _logistic, linear=True,
              incremental=_sgd_logistic, gpu=_always, default={"logistic_reg": 1.0}, quick=True),
    Algorithm("ridge", ("regression",), _regularised("ridge", "alpha"), _ridge, linear=True,
              incremental=_sgd_ridge, gpu=_always, default={"ridge_reg": 1.0}, quick=True),
    Algorithm("elastic_net", ("regression",), _elastic_net_space, _elastic_net, linear=True,
              incremental=_sgd_elastic_net, default={"elastic_net_reg": 0.01, "l1_ratio": 0.5}),
    Algorithm("random_forest", BOTH, _forest_space("random_forest"), _random_forest, prep="trees",
              default={"random_forest_trees": 100, **{f"random_forest_{k}": v for k, v in _FOREST.items()}}),
    Algorithm("extra_trees", BOTH, _forest_space("extra_trees"), _extra_trees, prep="trees",
              default={"extra_trees_trees": 100, **{f"extra_trees_{k}": v for k, v in _FOREST.items()}}),
    Algorithm("hist_gb", BOTH, _hist_gb_space, _hist_gb, prep="trees", quick=True,
              default={"hgb_lr": 0.1, "hgb_leaves": 31, "hgb_min_leaf": 20, "hgb_l2": 1e-6, "hgb_features": 1.0}),
    Algorithm("knn", BOTH, _knn_space, _knn, max_rows=50_000, default={"knn_k": 15, "knn_weights": "distance"}),
    Algorithm("svm", BOTH, _svm_space, _svm, max_rows=10_000,  # kernel SVMs scale quadratically
              default={"svm_C": 1.0, "svm_gamma": "scale"}),
    # LDA's lsqr solver goes through scipy's least squares: CPU only
    Algorithm("lda", ("classification",), _lda_space, _lda, gpu=lambda p: p.get("solver", "svd") == "svd",
              default={"lda_solver": "svd"}),
    # the average of the best configurations of other algorithms (soft voting), see ensemble.py
    Algorithm("ensemble", BOTH, _no_space, _ensemble, searched=False, onnx=False),  # mixed precisions: no match
)}


def get(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name}") from None


def default_params(name: str, rows: int) -> dict[str, Any]:
    """An algorithm's default configuration as the search's parameters (``space.define_space`` of its point)."""
    import optuna

    from nimbus.automl.space import define_space

    return define_space(optuna.trial.FixedTrial({"algorithm": name, **(get(name).default or {})}), [name], rows)


def default_point(name: str) -> dict[str, Any]:
    """An algorithm's default as a point of the search space (Optuna's flat parameter names)."""
    return {"algorithm": name, **(get(name).default or {})}


def choose(profile: Profile, include: list[str] | None = None, exclude: list[str] | None = None) -> list[str]:
    """The algorithms a search of ``profile``'s dataset tries, after the request's include/exclude."""
    if include:
        unknown = set(include) - set(ALGORITHMS)
        if unknown:
            raise InvalidInput(f"unknown algorithm(s) {', '.join(sorted(unknown))}; known: "
                               f"{', '.join(sorted(ALGORITHMS))}")
    pool = [a.name for a in ALGORITHMS.values() if profile.task in a.tasks and a.searched
            and (a.max_rows is None or profile.rows <= a.max_rows)
            and (not include or a.name in include) and a.name not in (exclude or [])]
    if not pool:
        raise InvalidInput(f"no algorithm left to search for a {profile.task} task after include/exclude")
    return pool
