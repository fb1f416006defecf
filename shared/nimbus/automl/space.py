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

ONE_HOT_MAX = 30  # a categorical column with more values than this is target-encoded


def define_space(trial: Any, pool: list[str], rows: int = 0) -> dict[str, Any]:
    """Optuna define-by-run: the algorithm, then only its own parameters (``algorithms.py``)."""
    algo = trial.suggest_categorical("algorithm", pool)
    return {"algorithm": algo, **algorithms.get(algo).space(trial, rows)}


def estimator(params: dict[str, Any], task: Task, seed: int = 0) -> Any:
    kw = {k: v for k, v in params.items() if k != "algorithm"}
    return algorithms.get(params["algorithm"]).estimator(kw, task, seed)


def low_cardinality(profile: Profile) -> tuple[list[str], list[str]]:
    """The categorical columns with at most ``ONE_HOT_MAX`` values (one-hot, or split on natively by
    trees), and the others (target-encoded: one-hot would widen the rows by every value)."""
    cards = profile.cardinality
    low = [c for c in profile.categorical if cards.get(c, 0) <= ONE_HOT_MAX]
    return low, [c for c in profile.categorical if c not in low]


def preprocessor(profile: Profile, kind: str = "scaled") -> Any:
    """The columns as a model takes them. ``scaled`` (linear models, kernels, neighbours): numbers imputed
    with a missing indicator and standardised, categories one-hot. ``trees``: numbers as they are (the
    trees handle missing values), categories as ordinal codes (missing and unseen ones missing), which
    HistGradientBoosting splits on as categories (``categorical_columns``). Either way, categories with
    many values are target-encoded (cross-fitted, so a row's own target does not leak into its code)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder, StandardScaler

    low, high = low_cardinality(profile)
    trees = kind == "trees"
    parts = []
    if profile.numeric:
        numbers = "passthrough" if trees else make_pipeline(SimpleImputer(strategy="median", add_indicator=True),
                                                            StandardScaler())
        parts.append(("numeric", numbers, profile.numeric))
    if low and trees:
        parts.append(("categorical", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan,
                                                    encoded_missing_value=np.nan), low))
    elif low:
        parts.append(("categorical", make_pipeline(
            SimpleImputer(strategy="most_frequent"),
            OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=5, sparse_output=False)), low))
    if high:
        from sklearn.model_selection import KFold, StratifiedKFold
        from sklearn.preprocessing import TargetEncoder

        regression = profile.task == "regression"
        folds = (KFold if regression else StratifiedKFold)(5, shuffle=True, random_state=0)  # reproducible
        encoder = TargetEncoder(target_type="continuous" if regression else "auto", cv=folds)
        parts.append(("many_values", make_pipeline(SimpleImputer(strategy="constant", fill_value="__missing__"),
                                                   encoder), high))
    if profile.datetime:
        dates = [FunctionTransformer(date_parts, feature_names_out="one-to-one")]
        dates += [] if trees else [SimpleImputer(strategy="median"), StandardScaler()]
        parts.append(("datetime", make_pipeline(*dates), profile.datetime))
    return ColumnTransformer(parts, remainder="drop", verbose_feature_names_out=False)


def categorical_columns(profile: Profile) -> list[int]:
    """Positions of the ordinal-coded categories in ``preprocessor(profile, "trees")``'s output."""
    low, _ = low_cardinality(profile)
    start = len(profile.numeric)
    return list(range(start, start + len(low)))


def date_parts(frame: Any) -> Any:
    """Dates as numbers a model can use: days since 1970 (trend)."""
    import pandas as pd

    out = frame.apply(lambda c: pd.to_datetime(c, errors="coerce"))
    return np.column_stack([(out[c] - pd.Timestamp("1970-01-01")).dt.days.astype(float) for c in out.columns])


def pipeline(params: dict[str, Any], profile: Profile, seed: int = 0) -> Any:
    from sklearn.pipeline import Pipeline

    if params["algorithm"] == "ensemble":  # each member with its own preprocessing, their outputs averaged
        from sklearn.ensemble import VotingClassifier, VotingRegressor

        members = [(f"{n}_{m['algorithm']}", pipeline(m, profile, seed)) for n, m in enumerate(params["members"])]
        voting = VotingClassifier(members, voting="soft") if profile.task == "classification" \
            else VotingRegressor(members)
        return Pipeline([("model", voting)])
    kind = algorithms.get(params["algorithm"]).prep
    model = estimator(params, profile.task, seed)
    if kind == "trees" and hasattr(model, "categorical_features"):  # HistGradientBoosting: native categories
        model.set_params(categorical_features=categorical_columns(profile) or None)
    return Pipeline([("prep", preprocessor(profile, kind)), ("model", model)])
