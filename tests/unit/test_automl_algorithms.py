"""The algorithm declarations: each one's space yields parameters its estimator takes, and the pool follows them."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest

from nimbus.automl.algorithms import ALGORITHMS, choose, default_params, get
from nimbus.automl.profile import profile
from nimbus.automl.refit import incremental_estimator
from nimbus.automl.space import define_space, pipeline
from nimbus.errors import InvalidInput


def frame(task: str, rows: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 3))
    y = np.where(x[:, 0] > 0, "yes", "no") if task == "classification" else x[:, 0] * 2 + rng.normal(size=rows)
    return pd.DataFrame(x, columns=["a", "b", "c"]).assign(y=y)


SEARCHED = [(a.name, t) for a in ALGORITHMS.values() if a.searched for t in a.tasks]


@pytest.mark.parametrize(("name", "task"), SEARCHED)
def test_a_sampled_configuration_builds_and_fits(name: str, task: str) -> None:
    data = frame(task)
    prof = profile(data, "y", task)  # type: ignore[arg-type]
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    params = define_space(trial, [name], rows=len(data))
    assert params["algorithm"] == name and set(params) - {"algorithm"}  # its own parameters, and only them
    model = pipeline(params, prof).fit(data.drop(columns=["y"]), data["y"])
    assert model.predict(data.drop(columns=["y"]).head(3)).shape == (3,)


@pytest.mark.parametrize(("name", "task"), SEARCHED)
def test_each_default_is_a_point_of_its_own_space_and_fits(name: str, task: str) -> None:
    data = frame(task)
    prof = profile(data, "y", task)  # type: ignore[arg-type]
    params = default_params(name, len(data))
    sampled = define_space(optuna.create_study().ask(), [name], rows=len(data))
    assert set(params) == set(sampled)  # the same parameters the search sets, nothing else
    assert pipeline(params, prof).fit(data.drop(columns=["y"]), data["y"]).predict(data.head(2)).shape == (2,)


def categorical_frame(rows: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    plan = rng.choice(["a", "b", "c"], rows)
    city = np.array([f"city{i}" for i in rng.integers(0, 80, rows)], dtype=object)  # 80 values: many
    y = np.where((plan == "a") ^ (rng.random(rows) < 0.1), "yes", "no")
    plan = plan.astype(object)
    plan[:20] = None  # missing categories
    return pd.DataFrame({"plan": plan, "city": city, "x": rng.normal(size=rows), "y": y})


def test_trees_split_on_categories_natively_and_many_values_are_target_encoded() -> None:
    data = categorical_frame()
    prof = profile(data, "y")
    assert prof.cardinality == {"plan": 3, "city": 80}
    model = pipeline(default_params("hist_gb", len(data)), prof)
    assert model[-1].categorical_features == [1]  # after the one number: plan's ordinal codes
    encoders = {name: type(step).__name__ for name, step, _ in model[0].transformers}
    assert encoders["categorical"] == "OrdinalEncoder" and encoders["numeric"] == "str"  # passthrough
    model.fit(data.drop(columns=["y"]), data["y"])
    assert "TargetEncoder" in str(model[0].named_transformers_["many_values"])
    assert model.score(data.drop(columns=["y"]), data["y"]) > 0.85  # plan decides y (10% noise)
    scaled = pipeline(default_params("logistic", len(data)), prof)
    assert "OneHotEncoder" in str(scaled[0].transformers[1][1]) and "TargetEncoder" in str(scaled[0].transformers[2][1])


def test_an_ensemble_averages_its_members_and_is_never_searched() -> None:
    data = categorical_frame()
    prof = profile(data, "y")
    members = [default_params("hist_gb", len(data)), default_params("logistic", len(data))]
    model = pipeline({"algorithm": "ensemble", "members": members}, prof).fit(data.drop(columns=["y"]), data["y"])
    x = data.drop(columns=["y"]).head(5)
    alone = [m.predict_proba(x) for m in model[-1].estimators_]
    assert np.allclose(model.predict_proba(x), np.mean(alone, axis=0))
    assert "ensemble" not in choose(prof) and "ensemble" not in choose(profile(frame("regression"), "y"))


def test_linear_algorithms_declare_their_incremental_counterpart() -> None:
    for algorithm in ALGORITHMS.values():
        assert algorithm.linear == (algorithm.incremental is not None), algorithm.name
    sgd = incremental_estimator({"algorithm": "logistic", "C": 2.0}, "classification", rows=1000)
    assert sgd.alpha == pytest.approx(1 / 2000)


def test_the_pool_follows_task_size_and_the_request() -> None:
    small = profile(frame("classification"), "y")
    assert choose(small) == [a.name for a in ALGORITHMS.values() if "classification" in a.tasks and a.searched]
    large = profile(pd.DataFrame({"x": range(30_000), "y": [0.5, 1.5, 2.25] * 10_000}), "y")
    assert "svm" not in choose(large) and "knn" in choose(large) and get("svm").max_rows < large.rows
    assert choose(small, include=["hist_gb", "ridge"]) == ["hist_gb"]  # ridge is regression only
    with pytest.raises(InvalidInput, match="unknown algorithm"):
        choose(small, include=["deep_net"])
