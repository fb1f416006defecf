"""The first results of a job, scored in the runner before any Ray: the quick defaults, whatever the
clock says for the first; the other algorithms' defaults as the search's first points; and the ensemble
of the best, only when its evaluation fits the time it is given."""

from __future__ import annotations

import numpy as np
import pandas as pd

from nimbus.automl.algorithms import choose, default_point
from nimbus.automl.ensemble import ensemble_trial, expected_s, members
from nimbus.automl.profile import profile
from nimbus.automl.search import RUNNER_NODE, SearchData, defaults_to_search, first_results, plan_steps


def search_data(deadline: float = float("inf"), rows: int = 600) -> SearchData:
    rng = np.random.default_rng(3)
    x = pd.DataFrame({"a": rng.normal(size=rows), "b": rng.normal(size=rows),
                      "plan": rng.choice(["x", "y", "z"], rows)})
    y = pd.Series(np.where(x["a"] + (x["plan"] == "x") + rng.normal(0, 0.5, rows) > 0.5, "yes", "no"))
    prof = profile(x.assign(y=y), "y")
    return SearchData(x, y, plan_steps(y, prof), prof, "roc_auc", deadline=deadline)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_quick_defaults_are_scored_in_the_runner_on_every_fold() -> None:
    data = search_data()
    pool = choose(data.profile)
    seen: list[dict] = []
    trials = first_results(data, pool, seen.append)
    assert [t["params"]["algorithm"] for t in trials] == ["logistic", "hist_gb"] and seen == trials
    for trial in trials:
        assert trial["complete"] and trial["steps"] == 3 and trial["node"] == RUNNER_NODE
        assert 0.5 < trial["score"] <= 1.0 and trial["fit_s"] > 0
        assert trial["trial_id"] == f"default-{trial['params']['algorithm']}"
    assert trials[1]["params"]["learning_rate"] == 0.1  # the declared default, not a sampled configuration


def test_past_its_deadline_a_job_still_gets_one_scored_configuration() -> None:
    clock = Clock(1000.0)
    data = search_data(deadline=999.0)  # already late: a machine so busy that setup took the whole search
    trials = first_results(data, choose(data.profile), clock=clock)
    assert len(trials) == 1 and trials[0]["params"]["algorithm"] == "logistic"
    assert trials[0]["steps"] == 1 and not trials[0]["complete"]  # one fold, no further step started


def test_a_pool_without_quick_algorithms_starts_with_its_first_default() -> None:
    data = search_data()
    trials = first_results(data, ["knn", "random_forest"])
    assert [t["params"]["algorithm"] for t in trials] == ["knn"]


def test_the_search_starts_with_the_defaults_not_yet_scored() -> None:
    data = search_data()
    pool = choose(data.profile)
    points = defaults_to_search(pool, first_results(data, pool))
    assert [p["algorithm"] for p in points] == [a for a in pool if a not in ("logistic", "hist_gb")]
    assert default_point("random_forest") in points


def test_an_ensemble_of_the_best_algorithms_is_scored_like_a_trial_when_there_is_time() -> None:
    data = search_data()
    trials = first_results(data, ["logistic", "hist_gb"]) + first_results(data, ["knn"])
    assert [t["params"]["algorithm"] for t in members(trials)] == \
        [t["params"]["algorithm"] for t in sorted(trials, key=lambda t: -t["score"])]
    built = ensemble_trial(data, trials, seconds=60)
    assert built is not None and built["complete"] and built["params"]["algorithm"] == "ensemble"
    assert [m["algorithm"] for m in built["params"]["members"]] == [t["params"]["algorithm"] for t in members(trials)]
    assert 0.5 < built["score"] <= 1.0
    assert ensemble_trial(data, trials, seconds=expected_s(members(trials)) * 0.5) is None  # would not fit
    assert ensemble_trial(data, trials[:1], seconds=60) is None  # one algorithm: nothing to average
