"""The search on Ray Tune: Optuna proposes configurations across algorithms, ASHA stops
weak ones early, and actors are reused so a trial costs a fit, not a process start.

Before it, :func:`first_results` scores the quick algorithms' defaults (``algorithms.py``) in the
runner itself, while Ray starts: a job has a scored configuration within seconds whatever the
machine, and the search's first trials are the other algorithms' defaults.

A trial's iterations are its evaluation steps: cross-validation folds on small data,
growing training fractions (25%, 50%, 100%) against one holdout on larger data — so
ASHA can drop a configuration after its first, cheapest step.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from nimbus.automl import algorithms, gpu
from nimbus.automl.budget import step_fits
from nimbus.automl.metrics import scorer_name
from nimbus.automl.profile import Profile
from nimbus.automl.space import define_space, pipeline

CV_MAX_ROWS = 5_000
FRACTIONS = (0.25, 0.5, 1.0)


def plan_steps(y: pd.Series, profile: Profile, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, validation rows) per iteration."""
    from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

    n = len(y)
    index = np.arange(n)
    if n <= CV_MAX_ROWS:
        splitter = StratifiedKFold(3, shuffle=True, random_state=seed) if profile.task == "classification" \
            else KFold(3, shuffle=True, random_state=seed)
        return [(tr, va) for tr, va in splitter.split(index, y if profile.task == "classification" else None)]
    strat = y if profile.task == "classification" else None
    train, valid = train_test_split(index, test_size=0.2, random_state=seed, stratify=strat)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(train)
    return [(shuffled[: max(20, int(len(shuffled) * f))], valid) for f in FRACTIONS]


@dataclass
class SearchData:
    x: pd.DataFrame
    y: pd.Series
    steps: list[tuple[np.ndarray, np.ndarray]]
    profile: Profile
    metric: str
    deadline: float = float("inf")  # wall clock (time.time()): no step starts that would end after it
    device: str | None = None  # where the GPU family is fitted (gpu.py), None: the CPU


class Evaluation:
    """One configuration scored step by step on the search data: a trial's body, in a Tune actor or in
    the runner. A step whose fit would end after ``data.deadline`` is not started (the first always is)."""

    def __init__(self, data: SearchData, params: dict[str, Any]) -> None:
        self.data, self.params = data, params
        self.step_no, self.scores, self.fit_s = 0, [], 0.0

    @property
    def done(self) -> bool:
        return self.step_no >= len(self.data.steps)

    def estimate(self) -> float:
        """Folds: the mean so far; growing fractions: the latest (largest) fit."""
        return float(np.mean(self.scores)) if len(self.data.y) <= CV_MAX_ROWS else self.scores[-1]

    def can_step(self, now: float) -> bool:
        if not self.scores:
            return True
        done_rows = sum(len(self.data.steps[i][0]) for i in range(self.step_no))
        return step_fits(now, self.fit_s, done_rows, len(self.data.steps[self.step_no][0]), self.data.deadline)

    def step(self, fit: Callable[[np.ndarray], Any] | None = None) -> float:
        """Fit on the next step's rows (``fit``: how, when not a plain fit here), score on its validation rows."""
        from sklearn.metrics import get_scorer

        d = self.data
        train, valid = d.steps[self.step_no]
        start = time.perf_counter()
        model = fit(train) if fit is not None else pipeline(self.params, d.profile).fit(d.x.iloc[train], d.y.iloc[train])
        self.fit_s += time.perf_counter() - start
        self.scores.append(float(get_scorer(scorer_name(d.metric))(model, d.x.iloc[valid], d.y.iloc[valid])))
        self.step_no += 1
        return self.estimate()

    def trial(self, trial_id: str, node: str | None) -> dict[str, Any]:
        """As a trial of the leaderboard (the shape :func:`run_search` returns)."""
        return {"trial_id": trial_id, "params": self.params, "score": self.estimate(), "steps": self.step_no,
                "complete": self.done, "fit_s": self.fit_s, "node": node, "gpu": 0.0, "device": "cpu"}


RUNNER_NODE = "runner"  # the node of a configuration scored in the runner, not on Ray


def first_results(data: SearchData, pool: list[str], on_result: Callable[[dict[str, Any]], None] | None = None,
                  clock: Callable[[], float] = time.time) -> list[dict[str, Any]]:
    """The quick algorithms' defaults (the first of the pool when none is quick), scored here, one after
    another; the first always, the others only while ``data.deadline`` (on ``clock``) allows. ``on_result``
    sees each trial as it is scored."""
    quick = [a for a in pool if algorithms.get(a).quick] or pool[:1]
    trials: list[dict[str, Any]] = []
    failed: Exception | None = None
    for name in quick:
        if trials and clock() >= data.deadline:
            break
        evaluation = Evaluation(data, algorithms.default_params(name, len(data.y)))
        try:
            while not evaluation.done and evaluation.can_step(clock()):
                evaluation.step()
        except Exception as exc:  # noqa: BLE001 - a configuration that cannot fit these data is not a result
            failed = failed or exc
            continue
        trials.append(evaluation.trial(f"default-{name}", RUNNER_NODE))
        if on_result is not None:
            on_result(trials[-1])
    if not trials and failed is not None:
        raise failed
    return trials


def defaults_to_search(pool: list[str], scored: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The defaults of the pool's algorithms not scored yet, as the search's first points."""
    done = {t["params"]["algorithm"] for t in scored if t["trial_id"].startswith("default-")}
    return [algorithms.default_point(a) for a in pool if a not in done and algorithms.get(a).default is not None]


def fit_on_the_device(data: SearchData, params: dict[str, Any], rows: np.ndarray) -> tuple[Any, float]:
    """A Ray task holding a fraction of a GPU: the configuration fitted there; (model, GPU share held)."""
    import ray

    model = pipeline(params, data.profile)
    gpu.fit_on_device(model, data.x.iloc[rows], data.y.iloc[rows], data.device)
    return model, float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))


def make_trainable():
    import ray
    from ray import tune

    # GPU fits are tasks of their own (0 CPU: the trial's CPU waits for them; a GPU share), so every
    # trial actor asks for the same single CPU and Tune keeps reusing them across both families.
    # "DEFAULT": outside the trial's placement group, which Tune makes for its CPU alone.
    # max_calls=0: a worker serves many fits (Ray's default for GPU tasks, 1, starts a process a fit).
    # Their workers, and only theirs, import scipy with its array-API support on (WORKER_ENV).
    device_fit = ray.remote(num_cpus=0, num_gpus=gpu.GPU_PER_TRIAL, max_retries=0, max_calls=0,
                            scheduling_strategy="DEFAULT",
                            runtime_env={"env_vars": dict(gpu.WORKER_ENV)})(fit_on_the_device)

    class EvaluateConfig(tune.Trainable):
        def setup(self, config: dict[str, Any], shared: list | None = None) -> None:
            self.data_ref = shared[0]  # one copy of the data in the object store, for actors and GPU tasks
            self.data: SearchData = ray.get(self.data_ref)
            self._configure(config)

        def _configure(self, config: dict[str, Any]) -> None:
            self.params = config["params"]
            self.evaluation, self.gpu_share = Evaluation(self.data, self.params), 0.0

        def save_checkpoint(self, checkpoint_dir: str) -> dict[str, Any]:
            # Tune checkpoints trials it pauses or stops at the budget: the state is tiny.
            e = self.evaluation
            return {"params": self.params, "step_no": e.step_no, "scores": e.scores, "fit_s": e.fit_s}

        def load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            self._configure({"params": checkpoint["params"]})
            e = self.evaluation
            e.step_no, e.scores, e.fit_s = checkpoint["step_no"], checkpoint["scores"], checkpoint["fit_s"]

        def reset_config(self, new_config: dict[str, Any]) -> bool:  # actor reuse: no new process
            self._configure(new_config)
            return True

        def step(self) -> dict[str, Any]:
            e = self.evaluation
            if not e.can_step(time.time()):  # its next step would end after the deadline: done as it is
                return self._result(done=True)
            e.step(self._fit_on_device if self._on_device() else None)
            return self._result(done=e.done)

        def _fit_on_device(self, rows: np.ndarray) -> Any:
            model, self.gpu_share = ray.get(device_fit.remote(self.data_ref, self.params, rows))
            return model

        def _on_device(self) -> bool:
            return self.data.device is not None and algorithms.get(self.params["algorithm"]).on_device(self.params)

        def _result(self, done: bool) -> dict[str, Any]:
            e = self.evaluation
            return {"score": e.estimate(), "steps": e.step_no, "fit_s": e.fit_s, "done": done,
                    "algorithm": self.params["algorithm"], "node": ray.get_runtime_context().get_node_id(),
                    "gpu": self.gpu_share, "device": self.data.device if self._on_device() else "cpu"}

    return EvaluateConfig


class Space:
    """The define-by-run space for a pool of algorithms (a class: Tune pickles its searcher)."""

    def __init__(self, pool: list[str], rows: int) -> None:
        self.pool, self.rows = pool, rows

    def __call__(self, trial: Any) -> dict[str, Any]:
        return {"params": define_space(trial, self.pool, self.rows)}


def run_search(data: SearchData, pool: list[str], budget_s: float, max_trials: int | None, concurrency: int,
               on_result: Any = None, seed: int = 0, storage: str | None = None,
               stopper: Any = None, device: str | None = None,
               points: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Search until ``budget_s`` or ``max_trials``; returns every trial, best first. ``points``
    (configurations as points of the space, e.g. :func:`defaults_to_search`) are tried first.

    With a ``device``, the GPU family's configurations are fitted there, in Ray tasks that take a
    fraction of a GPU each."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study created
    # a trial stopped at the budget before its first result has no metrics: expected, not a warning
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    # No CSV/JSON/TensorBoard file per trial: the results are read from memory, and a runner reusing its
    # Ray across jobs kept those files open (ResourceWarnings by the thousand in a benchmark of 11 jobs).
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    if device is not None:
        data = replace(data, device=device)
    shared = [ray.put(data)]  # a list: Tune hands the reference itself to the trials
    searcher = ConcurrencyLimiter(OptunaSearch(space=Space(pool, len(data.y)), metric="score", mode="max",
                                               sampler=optuna.samplers.TPESampler(seed=seed),
                                               points_to_evaluate=points or None),
                                  max_concurrent=concurrency)
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=len(data.steps), grace_period=1,
                              reduction_factor=2)
    callbacks = [on_result] if on_result is not None else []
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(make_trainable(), shared=shared), {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=max_trials or -1,
                                    time_budget_s=budget_s, reuse_actors=True, metric="score", mode="max"),
        run_config=tune.RunConfig(callbacks=callbacks, verbose=0, log_to_file=False, storage_path=storage,
                                  checkpoint_config=None, stop=stopper),
    )
    grid = tuner.fit()
    trials = []
    for result in grid:
        if result.metrics is None or "score" not in result.metrics:
            continue
        m = result.metrics
        trials.append({"trial_id": m.get("trial_id") or result.path.rsplit("/", 1)[-1],
                       "params": result.config["params"], "score": m["score"],
                       "steps": m.get("steps", 0), "complete": m.get("steps", 0) >= len(data.steps),
                       "fit_s": m.get("fit_s", 0.0), "node": m.get("node"), "gpu": m.get("gpu", 0.0),
                       "device": m.get("device", "cpu")})
    trials.sort(key=lambda t: (t["complete"], t["score"]), reverse=True)
    return trials
