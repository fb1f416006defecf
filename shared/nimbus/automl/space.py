"""The search space over the declared algorithms (``algorithms.py``), and the preprocessing built from a profile.

One Optuna define-by-run space covers every algorithm (conditional parameters), so the
search spends trials where the scores are; each configuration becomes a scikit-learn
Pipeline that carries its preprocessing into the exported model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nimbus.automl import algorithms
from nimbus.automl.profile import Profile, Task


def define_space(trial: Any, pool: list[str], rows: int = 0) -> dict[str, Any]:
    """Optuna define-by-run: the algorithm, then only its own parameters (``algorithms.py``)."""
    algo = trial.suggest_categorical("algorithm", pool)
    return {"algorithm": algo, **algorithms.get(algo).space(trial, rows)}


def estimator(params: dict[str, Any], task: Task, seed: int = 0) -> Any:
    kw = {k: v for k, v in params.items() if k != "algorithm"}
    return algorithms.get(params["algorithm"]).estimator(kw, task, seed)


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
