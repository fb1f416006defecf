"""The algorithm declarations: each one's space yields parameters its estimator takes, and the pool follows them."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest

from nimbus.automl.algorithms import ALGORITHMS, choose, get
from nimbus.automl.profile import profile
from nimbus.automl.refit import incremental_estimator
from nimbus.automl.space import define_space, pipeline
from nimbus.errors import InvalidInput


def frame(task: str, rows: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 3))
    y = np.where(x[:, 0] > 0, "yes", "no") if task == "classification" else x[:, 0] * 2 + rng.normal(size=rows)
    return pd.DataFrame(x, columns=["a", "b", "c"]).assign(y=y)


@pytest.mark.parametrize(("name", "task"), [(a.name, t) for a in ALGORITHMS.values() for t in a.tasks])
def test_a_sampled_configuration_builds_and_fits(name: str, task: str) -> None:
    data = frame(task)
    prof = profile(data, "y", task)  # type: ignore[arg-type]
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    params = define_space(trial, [name], rows=len(data))
    assert params["algorithm"] == name and set(params) - {"algorithm"}  # its own parameters, and only them
    model = pipeline(params, prof).fit(data.drop(columns=["y"]), data["y"])
    assert model.predict(data.drop(columns=["y"]).head(3)).shape == (3,)


def test_linear_algorithms_declare_their_incremental_counterpart() -> None:
    for algorithm in ALGORITHMS.values():
        assert algorithm.linear == (algorithm.incremental is not None), algorithm.name
    sgd = incremental_estimator({"algorithm": "logistic", "C": 2.0}, "classification", rows=1000)
    assert sgd.alpha == pytest.approx(1 / 2000)


def test_the_pool_follows_task_size_and_the_request() -> None:
    small = profile(frame("classification"), "y")
    assert choose(small) == [a.name for a in ALGORITHMS.values() if "classification" in a.tasks]
    large = profile(pd.DataFrame({"x": range(30_000), "y": [0.5, 1.5, 2.25] * 10_000}), "y")
    assert "svm" not in choose(large) and "knn" in choose(large) and get("svm").max_rows < large.rows
    assert choose(small, include=["hist_gb", "ridge"]) == ["hist_gb"]  # ridge is regression only
    with pytest.raises(InvalidInput, match="unknown algorithm"):
        choose(small, include=["deep_net"])
