"""The algorithms searched and their hyperparameters, and the preprocessing built from a profile.

One Optuna define-by-run space covers every algorithm (conditional parameters), so the
search spends trials where the scores are; each configuration becomes a scikit-learn
Pipeline that carries its preprocessing into the exported model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nimbus.automl.profile import Profile

CLASSIFIERS = ("logistic", "random_forest", "extra_trees", "hist_gb", "knn", "svm", "lda")
REGRESSORS = ("ridge", "elastic_net", "random_forest", "extra_trees", "hist_gb", "knn", "svm")
SVM_MAX_ROWS = 10_000  # kernel SVMs scale quadratically: only for small data
KNN_MAX_ROWS = 50_000


def algorithms(profile: Profile, include: list[str] | None = None, exclude: list[str] | None = None) -> list[str]:
    pool = list(CLASSIFIERS if profile.task == "classification" else REGRESSORS)
    if profile.rows > SVM_MAX_ROWS:
        pool.remove("svm")
    if profile.rows > KNN_MAX_ROWS:
        pool.remove("knn")
    if include:
        unknown = set(include) - set(CLASSIFIERS + REGRESSORS)
        if unknown:
            from nimbus.errors import InvalidInput

            raise InvalidInput(f"unknown algorithm(s) {', '.join(sorted(unknown))}; known: "
                               f"{', '.join(sorted(set(CLASSIFIERS + REGRESSORS)))}")
        pool = [a for a in pool if a in include]
    pool = [a for a in pool if a not in (exclude or [])]
    if not pool:
        from nimbus.errors import InvalidInput

        raise InvalidInput(f"no algorithm left to search for a {profile.task} task after include/exclude")
    return pool


def define_space(trial: Any, pool: list[str], rows: int = 0) -> dict[str, Any]:
    """Optuna define-by-run: the algorithm, then only its own parameters.

    On larger data the ensembles are kept smaller, so one fit cannot eat the budget."""
    algo = trial.suggest_categorical("algorithm", pool)
    p: dict[str, Any] = {"algorithm": algo}
    if algo in ("logistic", "ridge", "elastic_net"):
        p["C" if algo == "logistic" else "alpha"] = trial.suggest_float(f"{algo}_reg", 1e-3, 1e2, log=True)
        if algo == "elastic_net":
            p["l1_ratio"] = trial.suggest_float("l1_ratio", 0.05, 0.95)
    elif algo in ("random_forest", "extra_trees"):
        p["n_estimators"] = trial.suggest_int(f"{algo}_trees", 50, 300 if rows <= 50_000 else 100, step=50)
        p["max_depth"] = trial.suggest_categorical(f"{algo}_depth", [None, 6, 12, 20])
        p["min_samples_leaf"] = trial.suggest_int(f"{algo}_leaf", 1, 10)
        p["max_features"] = trial.suggest_categorical(f"{algo}_features", ["sqrt", 0.5, 1.0])
    elif algo == "hist_gb":
        p["learning_rate"] = trial.suggest_float("hgb_lr", 0.02, 0.3, log=True)
        p["max_leaf_nodes"] = trial.suggest_int("hgb_leaves", 8, 64, log=True)
        p["l2_regularization"] = trial.suggest_float("hgb_l2", 1e-6, 1.0, log=True)
        p["max_iter"] = trial.suggest_int("hgb_iter", 50, 300 if rows <= 50_000 else 150, step=50)
    elif algo == "knn":
        p["n_neighbors"] = trial.suggest_int("knn_k", 3, 50, log=True)
        p["weights"] = trial.suggest_categorical("knn_weights", ["uniform", "distance"])
    elif algo == "svm":
        p["C"] = trial.suggest_float("svm_C", 1e-2, 1e2, log=True)
        p["gamma"] = trial.suggest_categorical("svm_gamma", ["scale", "auto"])
    elif algo == "lda":
        p["solver"] = trial.suggest_categorical("lda_solver", ["svd", "lsqr"])
    return p


def estimator(params: dict[str, Any], task: str, seed: int = 0) -> Any:
    from sklearn import discriminant_analysis, ensemble, linear_model, neighbors, svm

    algo = params["algorithm"]
    kw = {k: v for k, v in params.items() if k != "algorithm"}
    classify = task == "classification"
    if algo == "logistic":
        return linear_model.LogisticRegression(max_iter=2000, **kw)
    if algo == "ridge":
        return linear_model.Ridge(**kw)
    if algo == "elastic_net":
        return linear_model.ElasticNet(max_iter=5000, **kw)
    if algo == "random_forest":
        cls = ensemble.RandomForestClassifier if classify else ensemble.RandomForestRegressor
        return cls(random_state=seed, n_jobs=1, **kw)
    if algo == "extra_trees":
        cls = ensemble.ExtraTreesClassifier if classify else ensemble.ExtraTreesRegressor
        return cls(random_state=seed, n_jobs=1, **kw)
    if algo == "hist_gb":
        cls = ensemble.HistGradientBoostingClassifier if classify else ensemble.HistGradientBoostingRegressor
        return cls(random_state=seed, early_stopping=True, **kw)
    if algo == "knn":
        return (neighbors.KNeighborsClassifier if classify else neighbors.KNeighborsRegressor)(**kw)
    if algo == "svm":
        return svm.SVC(probability=True, random_state=seed, **kw) if classify else svm.SVR(**kw)
    if algo == "lda":
        return discriminant_analysis.LinearDiscriminantAnalysis(**kw)
    raise ValueError(f"unknown algorithm {algo}")


def preprocessor(profile: Profile) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    parts = []
    if profile.numeric:
        parts.append(("numeric", make_pipeline(SimpleImputer(strategy="median", add_indicator=True),
                                               StandardScaler()), profile.numeric))
    if profile.categorical:
        parts.append(("categorical", make_pipeline(
            SimpleImputer(strategy="most_frequent"),
            OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=5, sparse_output=False)),
            profile.categorical))
    if profile.datetime:
        parts.append(("datetime", make_pipeline(FunctionTransformer(date_parts, feature_names_out="one-to-one"),
                                                SimpleImputer(strategy="median"), StandardScaler()),
                      profile.datetime))
    return ColumnTransformer(parts, remainder="drop", verbose_feature_names_out=False)


def date_parts(frame: Any) -> Any:
    """Dates as numbers a model can use: days since 1970 (trend)."""
    import pandas as pd

    out = frame.apply(lambda c: pd.to_datetime(c, errors="coerce"))
    return np.column_stack([(out[c] - pd.Timestamp("1970-01-01")).dt.days.astype(float) for c in out.columns])


def pipeline(params: dict[str, Any], profile: Profile, seed: int = 0) -> Any:
    from sklearn.pipeline import Pipeline

    return Pipeline([("prep", preprocessor(profile)), ("model", estimator(params, profile.task, seed))])
