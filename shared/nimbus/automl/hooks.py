"""Ray Tune hooks of an AutoML job: progress into MongoDB, trials to the MLflow logger, and a
stopper that ends the search when the rest of the job would not fit in the budget.

They live in a module of their own (imported only when a search runs) and reach the job's
live objects through ``ACTIVE`` by job id: Tune pickles callbacks and stoppers with its
experiment state, and a logger thread or a database client does not pickle.
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback
from ray.tune.stopper import Stopper

ACTIVE: dict[str, dict[str, Any]] = {}


class Progress(Callback):
    """The job's progress: ``before`` configurations scored before the search, the best of them ``best``."""

    def __init__(self, job: str, before: int = 0, best: float | None = None) -> None:
        self.job, self.trials, self.before, self.best, self.last = job, set(), before, best, 0.0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        state = ACTIVE.get(self.job)
        if state is None:
            return
        self.trials.add(trial.trial_id)
        score = result.get("score")
        if score is not None and (self.best is None or score > self.best):
            self.best = score
        if time.monotonic() - self.last > 1.0:
            self.last = time.monotonic()
            best = None if self.best is None else (-self.best if state["lower"] else self.best)
            state["progress"]({"trials": self.before + len(self.trials), "best": best})

    def on_trial_complete(self, iteration, trials, trial, **info):
        state = ACTIVE.get(self.job)
        r = trial.last_result or {}
        if state is not None and "score" in r:
            state["logger"].submit({
                "trial_id": trial.trial_id, "params": trial.config["params"], "score": r["score"],
                "steps": r.get("steps", 0), "complete": r.get("steps", 0) >= state["steps"],
                "fit_s": r.get("fit_s", 0.0), "node": r.get("node")})


class Budget(Stopper):
    """Stop when the job is no longer the runner's, or the trials still to log would not fit before
    the search's deadline."""

    def __init__(self, job: str) -> None:
        self.job = job

    def __call__(self, trial_id: str, result: dict) -> bool:
        return self.stop_all()

    def stop_all(self) -> bool:
        state = ACTIVE.get(self.job)
        if state is None:
            return False
        if state["stop"].is_set():  # the job was cancelled, or its lease lost: end the search now
            return True
        return not state["budget"].can_finish(state["logger"].backlog_s(), state["deadline"])
