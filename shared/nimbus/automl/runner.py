"""Running an AutoML job within its budget: read and sample the data, search on Ray, refit the
winner, evaluate it on held-out rows, explain and export it, register it — and Ray's lifecycle,
which is decided here and nowhere else:

* a serving process (the API, whose jobs run in threads) keeps one Ray for the process
  (:func:`ray_session`, idempotent; it ends with the process);
* a one-shot process (the CLI, the demo, a worker) uses :func:`run_once`, which starts Ray,
  runs the job and shuts Ray down in the calling thread, so the process exits at once (a
  local Ray left to the interpreter's exit hooks held a CLI for a minute and made it fail).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from nimbus.automl import algorithms
from nimbus.automl.budget import JobBudget
from nimbus.automl.data import Scan, scan
from nimbus.automl.evaluation import evaluate, permutation_importances
from nimbus.automl.jobs import JobRequest, check_model_owner, claim_model, finish, get_job, public_error, update
from nimbus.automl.metrics import check_metric, sign
from nimbus.automl.profile import Profile, profile
from nimbus.automl.search import SearchData, plan_steps, run_search
from nimbus.automl.tracking import TrialLogger, register_winner
from nimbus.config import Settings
from nimbus.errors import NimbusError

WATCH_EVERY_S = 0.5


# ---- Ray ------------------------------------------------------------------------------------
def ray_session(settings: Settings) -> None:
    """This process's Ray, started when it has none: the cluster at ``ray_address``, else a fresh local one."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    if settings.ray_address:  # a cluster: "host:port" (started with `ray start`) or "ray://host:10001"
        ray.init(address=settings.ray_address, log_to_driver=False)
    else:
        # "local": always a fresh in-process cluster, never one `ray start` left on this machine.
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)


@contextmanager
def ray_for_this_run(settings: Settings) -> Iterator[None]:
    """Ray for a one-shot process, shut down on the way out in the calling (main) thread."""
    import ray

    ray_session(settings)
    try:
        yield
    finally:
        ray.shutdown()


def run_once(settings: Settings, job_id: str, watch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run one job in a one-shot process: start Ray, run the job (``watch`` sees the job's document
    every half second meanwhile), shut Ray down; the finished job, or NimbusError when it failed."""
    with ray_for_this_run(settings):
        thread = run_in_background(settings, job_id)
        while thread.is_alive():
            if watch is not None:
                watch(get_job(settings, job_id))
            thread.join(WATCH_EVERY_S)
    doc = get_job(settings, job_id)
    if doc["status"] != "succeeded":
        # a one-shot process runs for the user who started it: the full error, not only the public one
        raise NimbusError(f"job {job_id} failed: {doc.get('error_detail') or doc.get('error')}")
    return doc


def run_in_background(settings: Settings, job_id: str) -> threading.Thread:
    """Run a job in a thread of this process (the API's jobs; :func:`run_once` watches one)."""
    def target() -> None:
        try:
            run_job(settings, job_id)
        except Exception:  # noqa: BLE001 - recorded in the job document by run_job
            pass

    thread = threading.Thread(target=target, name=f"automl-{job_id}", daemon=True)
    thread.start()
    return thread


# ---- the job ----------------------------------------------------------------------------------
def run_job(settings: Settings, job_id: str, clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Search, track, refit, evaluate, register. Ends within the budget (it reserves refit time)."""
    started = clock()
    from nimbus.automl.explain import warm_up

    threading.Thread(target=warm_up, name="automl-warm-up", daemon=True).start()  # during the search
    job = get_job(settings, job_id)
    try:
        request = JobRequest.model_validate(job["request"])
    except Exception as exc:  # a record that does not validate ends too, freeing its slot
        finish(settings, job_id, {"status": "failed", "error": "the job's request is not valid",
                                  "error_detail": f"{type(exc).__name__}: {exc}", "finished_at": datetime.now(UTC)})
        raise
    budget = JobBudget(request.budget_s, clock, started)
    update(settings, job_id, {"status": "running", "started_at": datetime.now(UTC), "budget": budget.as_dict()})
    from threadpoolctl import threadpool_limits

    try:
        with threadpool_limits(1):  # as in the trials: OpenMP threads on a busy machine measured 7-40x slower
            result = _run(settings, job_id, request, budget, job.get("owner", "anonymous"))
    except Exception as exc:  # the end of a failed job: its owner's quota slot is freed with the status
        finish(settings, job_id, {"status": "failed", "error": public_error(exc),
                                  "error_detail": f"{type(exc).__name__}: {exc}", "finished_at": datetime.now(UTC)})
        raise
    finish(settings, job_id, {**result, "status": "succeeded", "finished_at": datetime.now(UTC),
                              "elapsed_s": budget.elapsed()})
    return get_job(settings, job_id)


@dataclass
class Prepared:
    """The job's data after its one pass: the sample, its profile, and the three splits."""

    sampled: Scan
    prof: Profile
    metric: str
    x_train: pd.DataFrame
    y_train: pd.Series
    x_test: pd.DataFrame
    y_test: pd.Series
    search: SearchData


def _prepare(settings: Settings, job_id: str, request: JobRequest, budget: JobBudget) -> Prepared:
    """One bounded-memory pass: exact counts, a training sample sized to memory, a disjoint test sample."""
    sampled = scan(settings, request.dataset, request.target, request.task)
    training = sampled.training()
    prof = profile(training, request.target, request.task, rows=sampled.rows,  # type: ignore[arg-type]
                   class_counts=sampled.class_counts)
    metric = check_metric(prof.task, request.metric, prof.classes)  # submit saw the first rows only
    search = sampled.search_sample(budget.search_rows())  # stratified: rare classes kept
    x_search = search.drop(columns=[request.target]).reset_index(drop=True)
    y_search = search[request.target].reset_index(drop=True)
    update(settings, job_id, {"profile": prof.as_dict(), "metric": metric,
                              "data": {**sampled.summary(), "search_rows": len(search)}})
    return Prepared(sampled, prof, metric, training.drop(columns=[request.target]), training[request.target],
                    sampled.test.drop(columns=[request.target]), sampled.test[request.target],
                    SearchData(x_search, y_search, plan_steps(y_search, prof), prof, metric))


def _search(settings: Settings, job_id: str, request: JobRequest, prep: Prepared,
            budget: JobBudget) -> tuple[list[dict[str, Any]], TrialLogger, dict[str, Any]]:
    """The trials, best first, the logger still logging them, and the search's timings."""
    ray_session(settings)
    import ray

    from nimbus.automl import hooks
    from nimbus.automl.gpu import search_device

    resources = ray.cluster_resources()
    concurrency = max(1, int(resources.get("CPU", os.cpu_count() or 1)))  # a trial takes a CPU (GPU ones too)
    device = search_device(request.gpu, resources.get("GPU", 0.0))
    setup_s = budget.elapsed()
    search_s = budget.search_s()
    update(settings, job_id, {"budget.search_s": search_s})
    pool = algorithms.choose(prep.prof, request.include, request.exclude)
    storage = settings.home / "automl" / job_id  # Tune's own bookkeeping, next to the other local state
    storage.mkdir(parents=True, exist_ok=True)
    searching = budget.clock()
    # Trials run in other processes (maybe on other nodes): their step guard gets a wall-clock deadline.
    data = SearchData(prep.search.x, prep.search.y, prep.search.steps, prep.prof, prep.metric,
                      deadline=time.time() + search_s)
    logger = TrialLogger(settings, job_id, prep.metric)
    hooks.ACTIVE[job_id] = {"logger": logger, "steps": len(data.steps), "budget": budget,
                            "deadline": searching + search_s, "lower": sign(prep.metric) < 0,
                            "progress": lambda p: update(settings, job_id, {"progress": p})}
    try:
        trials = run_search(data, pool, search_s, request.max_trials, concurrency, hooks.Progress(job_id),
                            storage=str(storage), stopper=hooks.Budget(job_id), device=device)
    finally:
        hooks.ACTIVE.pop(job_id, None)
    timings = {"setup_s": setup_s, "search_budget_s": search_s, "search_s": budget.clock() - searching,
               "gpu_trials": sum(1 for t in trials if t["gpu"] > 0)}
    if not trials:
        raise NimbusError("no trial finished within the budget; give the job a larger budget")
    return trials, logger, timings


def _run(settings: Settings, job_id: str, request: JobRequest, budget: JobBudget, owner: str) -> dict[str, Any]:
    from nimbus.automl import explain, export
    from nimbus.automl.refit import refit
    from nimbus.automl.report import diagnostics, publish

    prep = _prepare(settings, job_id, request, budget)
    trials, logger, timings = _search(settings, job_id, request, prep, budget)
    seconds_left = budget.refit_s()
    x_search = prep.search.x
    winner = _affordable_winner(trials, seconds_left, scale=1.5 * len(prep.x_train) / max(1, len(x_search)))
    # Refit on as many training rows as the winner's own measured speed fits in the time left, at half
    # that speed (fit cost grows faster than the rows for trees); never fewer than the search saw.
    steps = prep.search.steps
    fitted = sum(len(steps[i][0]) for i in range(min(len(steps), max(1, winner["steps"]))))
    max_rows = max(len(x_search), int(seconds_left / 2 * fitted / max(winner["fit_s"], 1e-3)))
    clock = budget.clock()
    model, refit_info = refit(settings, prep.sampled, winner["params"], prep.prof, prep.metric,
                              deadline=budget.refit_deadline, max_rows=max_rows)
    update(settings, job_id, {"refit": refit_info})
    fit_s = budget.clock() - clock
    test = evaluate(model, prep.x_test, prep.y_test, prep.metric)
    importances = permutation_importances(model, prep.x_test, prep.y_test, prep.metric)
    timings["refit_evaluate_s"] = budget.clock() - clock
    clock = budget.clock()
    onnx = export.winner_to_onnx(model, winner["params"]["algorithm"], prep.prof, prep.x_test, budget.extras_s())
    explanations = explain.explain(model, prep.prof.task, prep.x_train, prep.x_test, 0.4 * budget.extras_s())
    curve = explain.learning_curve(model, prep.x_train, prep.y_train, prep.metric, prep.prof.task, fit_s,
                                   budget.extras_s())
    timings["explain_export_s"] = budget.clock() - clock
    clock = budget.clock()
    logger.finish(trials)
    name = request.model_name(job_id)
    check_model_owner(settings, name, owner)  # again: another owner's job may have registered it since submit
    version, run_id = register_winner(settings, job_id, name, winner, model, prep.x_train, test,
                                      {"profile": prep.prof.as_dict(), "test": test, "importances": importances,
                                       "trials": len(trials)}, onnx.model)
    claim_model(settings, name, owner)
    timings["track_s"] = budget.clock() - clock
    direction = sign(prep.metric)
    leaderboard = [{"rank": n + 1, "algorithm": t["params"]["algorithm"], "params": t["params"],
                    "score": direction * t["score"], "complete": t["complete"], "fit_s": round(t["fit_s"], 3),
                    "node": t["node"], "chosen": t is winner} for n, t in enumerate(trials)]
    report = {"job": job_id, "profile": prep.prof.as_dict(), "metric": prep.metric, "leaderboard": leaderboard,
              "trials": len(trials), "test": test, "importances": importances,
              "diagnostics": diagnostics(model, prep.x_test, prep.y_test, prep.prof.task),
              "explanations": explanations, "learning_curve": curve, "onnx": onnx.info}
    exports = publish(settings, job_id, report, model, onnx)
    chosen = next(row for row in leaderboard if row["chosen"])
    return {"timings": timings, "leaderboard": leaderboard, "trials": len(trials), "winner": chosen, "test": test,
            "importances": importances, "model": {"name": name, "version": version, "run_id": run_id},
            "exports": exports, "progress": {"trials": len(trials), "best": leaderboard[0]["score"]}}


def _affordable_winner(trials: list[dict[str, Any]], seconds_left: float, scale: float) -> dict[str, Any]:
    """The best trial whose refit on all training rows should fit in the time left.

    The refit is estimated from the trial's own fit time, scaled to the full training set;
    when none fits, the quickest of the five best is taken, so the budget still holds."""
    complete = [t for t in trials if t["complete"]] or trials
    for trial in complete:
        if trial["fit_s"] / max(1, trial["steps"]) * scale <= seconds_left:
            return trial
    return min(complete[:5], key=lambda t: t["fit_s"] / max(1, t["steps"]))
