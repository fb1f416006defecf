"""Running an AutoML job within its budget: read and sample the data, search on Ray, refit the
winner, evaluate it on held-out rows, explain and export it, register it — and the runner's side of the
job lifecycle and Ray's lifecycle, which are decided here and nowhere else.

A job runs only in a runner that claimed it (:func:`nimbus.automl.jobs.claim`): the CLI's ``automl
run`` and ``automl worker``, a Ray job's entrypoint, the worker process of ``nimbus local serve``;
never in a thread of a serving process. While it runs, a :class:`Lease` renews the claim every third
of ``automl_lease_s``; once the job is no longer this runner's (cancelled, or its lease lapsed and it
was requeued) the search stops and nothing more is written. A version is registered at most once per
job, even when a job is run again after its runner died (:func:`nimbus.automl.tracking.register_winner`).

Ray: a runner's main thread starts it (:class:`RayStart`) while the job, in its own thread, reads its
data and scores the quick defaults (``search.first_results``), so the job has a result within seconds
and Ray's start overlaps that work instead of preceding it; a job whose budget leaves no time for a
distributed search does not start Ray at all. The main thread shuts down the Ray it started when the
job ends (:func:`run_once`), so the process exits at once (a local Ray left to the interpreter's exit
hooks held a CLI for a minute and made it fail); ``automl worker`` starts Ray once and reuses it for
every job it runs.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from nimbus import logs, tracing
from nimbus.automl import algorithms
from nimbus.automl.budget import RAY_TEARDOWN_S, JobBudget
from nimbus.automl.data import Scan, scan
from nimbus.automl.evaluation import evaluate, permutation_importances
from nimbus.automl.jobs import (
    JobRequest,
    check_model_owner,
    claim,
    claim_model,
    finish,
    get_job,
    new_runner_id,
    public_error,
    renew,
    update,
)
from nimbus.automl.metrics import check_metric, sign
from nimbus.automl.profile import Profile, profile
from nimbus.automl.search import SearchData, defaults_to_search, first_results, plan_steps, run_search
from nimbus.automl.tracking import TrialLogger, register_winner
from nimbus.config import Settings
from nimbus.errors import Conflict, NimbusError, StoreUnavailable

WATCH_EVERY_S = 0.5


class JobLost(NimbusError):
    """The runner no longer holds the job: it was cancelled, or its lease lapsed and it was requeued."""


# ---- Ray ------------------------------------------------------------------------------------
def ray_session(settings: Settings) -> bool:
    """This process's Ray, started when it has none: the cluster at ``ray_address``, else a fresh local one.
    True when it was started by this call."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    if settings.ray_address:  # a cluster: "host:port" (started with `ray start`) or "ray://host:10001"
        ray.init(address=settings.ray_address, log_to_driver=False)
    else:
        # "local": always a fresh in-process cluster, never one `ray start` left on this machine.
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    return True


class RayStart:
    """Ray for one job of a runner: started by the runner's main thread (:meth:`start`) while the job's
    thread prepares and scores its first results, waited for by the job only when it searches
    (:meth:`wait`), shut down by the main thread (:meth:`stop`) when this start began it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.started_here = self.skipped = False
        self.start_s: float | None = None

    @classmethod
    def running(cls, settings: Settings) -> RayStart:
        """A start that found Ray up already (the caller's own, e.g. a worker reusing it across jobs)."""
        start = cls(settings)
        start.ready.set()
        return start

    def start(self) -> None:
        began = time.monotonic()
        try:
            self.started_here = ray_session(self.settings)
        except Exception as exc:  # noqa: BLE001 - the job says it (its first results still stand)
            self.error = exc
        finally:
            self.start_s = round(time.monotonic() - began, 3)
            self.ready.set()

    def skip(self) -> None:
        """Not started: the job's budget leaves no time for a distributed search."""
        self.error = NimbusError("the budget left no time for a distributed search")
        self.skipped = True
        self.ready.set()

    def wait(self, timeout: float) -> bool:
        """Whether Ray is up within ``timeout`` seconds."""
        return self.ready.wait(max(0.0, timeout)) and self.error is None

    def stop(self) -> None:
        import ray

        if self.started_here:
            ray.shutdown()


def process_started() -> float:
    """When this process started, on ``time.monotonic`` (a one-shot CLI's budget counts from then)."""
    import psutil

    return time.monotonic() - max(0.0, time.time() - psutil.Process().create_time())


# ---- the runner's side of the lifecycle --------------------------------------------------------
class Lease:
    """A runner's hold on a claimed job: a heartbeat thread renews it every third of ``automl_lease_s``.

    ``lost`` is set once a renewal finds the job no longer this runner's (cancelled, or requeued after
    its lease lapsed); the search's stopper reads it, and :meth:`check` raises :class:`JobLost` before
    anything lasting (the registered version, the results) is written. A store outage does not lose the
    lease by itself: the heartbeat keeps trying until the lease really lapses."""

    def __init__(self, settings: Settings, job_id: str, runner: str) -> None:
        self.settings, self.job_id, self.runner = settings, job_id, runner
        self.lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"automl-lease-{job_id}", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _beat(self) -> None:
        every = self.settings.automl_lease_s / 3
        while not self._done.wait(every):
            if not self.renew():
                return

    def renew(self) -> bool:
        """One heartbeat now; False (and ``lost`` set) when the job is no longer held."""
        try:
            held = renew(self.settings, self.job_id, self.runner)
        except StoreUnavailable:
            return True  # try again at the next beat; a lapsed lease is noticed then
        if not held:
            self.lost.set()
        return held

    def check(self) -> None:
        """Raise :class:`JobLost` unless this runner still holds the job (asks the store now)."""
        if self.lost.is_set() or not self.renew():
            status = get_job(self.settings, self.job_id).get("status")
            raise JobLost(f"job {self.job_id} is no longer this runner's ({status}); it stopped without results")

    def update(self, fields: dict[str, Any]) -> None:
        """Progress of the job, written only while this runner holds it."""
        update(self.settings, self.job_id, fields, runner=self.runner)


def run_once(settings: Settings, job_id: str, watch: Callable[[dict[str, Any]], None] | None = None, *,
             runner: str | None = None, started: float | None = None) -> dict[str, Any]:
    """Run one job in a runner process: the job (claimed by ``runner``, or claimed here when None) in a
    thread, Ray started meanwhile in this one when the job can use it and not up yet, shut down here at
    the end. ``watch`` sees the job's document every half second; ``started`` (``time.monotonic``) is
    when the budget began, by default now. The finished job, or NimbusError when it failed, was
    cancelled or was lost."""
    import ray

    began = time.monotonic()
    runner = runner or _claimed(settings, job_id)
    request = get_job(settings, job_id).get("request") or {}
    reuse = ray.is_initialized()
    budget = JobBudget(float(request.get("budget_s") or 0), started=began if started is None else started,
                       teardown_s=0.0 if reuse else RAY_TEARDOWN_S)
    ray_start = RayStart.running(settings) if reuse else RayStart(settings)
    outcome: dict[str, BaseException] = {}

    def target() -> None:
        try:
            run_job(settings, job_id, runner=runner, budget=budget, ray_start=ray_start)
        except BaseException as exc:  # noqa: BLE001 - recorded in the job document by run_job
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"automl-{job_id}", daemon=True)
    thread.start()
    try:
        if not reuse:
            if budget.worth_searching(ray_up=False):
                ray_start.start()
            else:  # no Ray to shut down either: the job has that time too
                budget.teardown_s = 0.0
                ray_start.skip()
        while thread.is_alive():
            if watch is not None:
                watch(get_job(settings, job_id))
            thread.join(WATCH_EVERY_S)
    finally:
        ray_start.stop()
    doc = get_job(settings, job_id)
    if isinstance(outcome.get("error"), JobLost):
        raise outcome["error"]
    if doc["status"] != "succeeded":
        # a runner process runs for the user who started it: the full error, not only the public one
        raise NimbusError(f"job {job_id} {doc['status']}: {doc.get('error_detail') or doc.get('error')}")
    return doc


def _claimed(settings: Settings, job_id: str) -> str:
    """Claim a queued job for a new runner of this process; its runner id."""
    runner = new_runner_id()
    if claim(settings, runner, job_id) is None:
        raise Conflict(f"job {job_id} is not queued (unknown, ended, or another runner has it)")
    return runner


def work(settings: Settings, *, once: bool = False, runner: str | None = None, poll_s: float = 2.0,
         stop: threading.Event | None = None, say: Callable[[str], None] = print) -> int:
    """A runner process's loop: claim the oldest queued job (requeueing lapsed ones first), run it, again;
    with ``once``, until the queue is empty. Returns the number of jobs run. A store outage waits and retries."""
    runner = runner or new_runner_id()
    stop = stop or threading.Event()
    try:
        return _work(settings, once, runner, poll_s, stop, say)
    finally:
        import ray

        ray.shutdown()  # the Ray it started for its first job and reused for the others: here, in its thread


def _work(settings: Settings, once: bool, runner: str, poll_s: float, stop: threading.Event,
          say: Callable[[str], None]) -> int:
    ran, unavailable = 0, False
    while not stop.is_set():
        try:
            job = claim(settings, runner)
        except StoreUnavailable as exc:
            if not unavailable:
                say(f"waiting for the job store: {exc}")
            unavailable = True
            stop.wait(poll_s)
            continue
        unavailable = False
        if job is None:
            if once:
                break
            stop.wait(poll_s)
            continue
        say(f"running job {job['_id']} (attempt {job.get('attempts', 1)})")
        try:
            if JobBudget(float(job["request"].get("budget_s") or 0)).worth_searching(ray_up=False):
                ray_session(settings)  # started once, reused by the jobs after this one
            run_once(settings, job["_id"], runner=runner)
            say(f"job {job['_id']} succeeded")
        except Exception as exc:  # noqa: BLE001 - recorded in the job; the runner goes on
            say(str(exc))
        ran += 1
    return ran


# ---- the job ----------------------------------------------------------------------------------
def run_job(settings: Settings, job_id: str, clock: Callable[[], float] = time.monotonic, *,
            runner: str | None = None, budget: JobBudget | None = None,
            ray_start: RayStart | None = None) -> dict[str, Any]:
    """Search, track, refit, evaluate, register. Ends within the budget (it reserves refit time).

    ``runner`` is the claim this job runs under; None claims the queued job here (Conflict when it is not
    queued). ``budget``: the job's budget as its runner planned it (default: the request's, from now);
    ``ray_start``: Ray as the runner's main thread starts it (default: started here when the search runs)."""
    started = clock()
    runner = runner or _claimed(settings, job_id)
    import sklearn.base  # noqa: F401 - here first: a package imported by two threads at once can fail half-built

    from nimbus.automl.explain import warm_up

    threading.Thread(target=warm_up, name="automl-warm-up", daemon=True).start()  # during the search
    job = get_job(settings, job_id)
    try:
        request = JobRequest.model_validate(job["request"])
    except Exception as exc:  # a record that does not validate ends too, freeing its slot
        finish(settings, job_id, {"status": "failed", "error": "the job's request is not valid",
                                  "error_detail": f"{type(exc).__name__}: {exc}", "finished_at": datetime.now(UTC)},
               runner=runner)
        raise
    budget = budget or JobBudget(request.budget_s, clock, started)
    from threadpoolctl import threadpool_limits

    with Lease(settings, job_id, runner) as lease:
        lease.update({"started_at": datetime.now(UTC), "budget": budget.as_dict()})
        try:
            with threadpool_limits(1), tracing.attached(_submitter_trace(job)), \
                    tracing.span("automl.job", {"nimbus.job_id": job_id, "nimbus.attempt": job.get("attempts")}):
                # threadpool_limits(1): as in the trials, OpenMP threads on a busy machine measured 7-40x slower
                result = _run(settings, job_id, request, budget, job.get("owner", "anonymous"), lease, ray_start)
        except JobLost:
            raise
        except Exception as exc:  # the end of a failed job: its owner's quota slot is freed with the status
            finish(settings, job_id, {"status": "failed", "error": public_error(exc),
                                      "error_detail": f"{type(exc).__name__}: {exc}",
                                      "finished_at": datetime.now(UTC)}, runner=runner)
            raise
        elapsed = budget.elapsed()
        result["timings"]["total_s"] = round(elapsed, 3)
        if not finish(settings, job_id, {**result, "status": "succeeded", "finished_at": datetime.now(UTC),
                                         "elapsed_s": elapsed}, runner=runner):
            lease.check()  # cancelled in the last instant: JobLost (its version stays registered, once)
    return get_job(settings, job_id)


def _submitter_trace(job: dict[str, Any]) -> dict[str, str]:
    """The W3C context the job's span continues: the submitter's, recorded in the job at submit (an HTTP
    request's, whichever runner claims the job and however often it is requeued), else the one a Ray
    job's submitter left in ``TRACEPARENT``."""
    recorded = job.get("trace")
    if isinstance(recorded, dict) and isinstance(recorded.get("traceparent"), str):
        return {k: v for k, v in recorded.items() if k in ("traceparent", "tracestate") and isinstance(v, str)}
    return tracing.from_env()


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


def _prepare(settings: Settings, request: JobRequest, budget: JobBudget, lease: Lease) -> Prepared:
    """One bounded-memory pass: exact counts, a training sample sized to memory, a disjoint test sample."""
    sampled = scan(settings, request.dataset, request.target, request.task)
    training = sampled.training()
    prof = profile(training, request.target, request.task, rows=sampled.rows,  # type: ignore[arg-type]
                   class_counts=sampled.class_counts)
    metric = check_metric(prof.task, request.metric, prof.classes)  # submit saw the first rows only
    search = sampled.search_sample(budget.search_rows())  # stratified: rare classes kept
    x_search = search.drop(columns=[request.target]).reset_index(drop=True)
    y_search = search[request.target].reset_index(drop=True)
    lease.update({"profile": prof.as_dict(), "metric": metric,
                              "data": {**sampled.summary(), "search_rows": len(search)}})
    return Prepared(sampled, prof, metric, training.drop(columns=[request.target]), training[request.target],
                    sampled.test.drop(columns=[request.target]), sampled.test[request.target],
                    SearchData(x_search, y_search, plan_steps(y_search, prof), prof, metric))


def _search(settings: Settings, job_id: str, request: JobRequest, prep: Prepared, budget: JobBudget, lease: Lease,
            ray_start: RayStart | None, logger: TrialLogger) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The trials, best first (``logger`` logging them), and the search's timings: first the quick
    defaults scored here (while Ray starts), then, when the budget leaves time for it, the search on Ray."""
    setup_s = budget.elapsed()
    pool = algorithms.choose(prep.prof, request.include, request.exclude)
    # Trials run in other processes (maybe on other nodes): their step guard gets a wall-clock deadline.
    search_s = budget.search_s()
    data = SearchData(prep.search.x, prep.search.y, prep.search.steps, prep.prof, prep.metric,
                      deadline=time.time() + search_s)
    lower = sign(prep.metric) < 0
    firsts: list[dict[str, Any]] = []
    timings: dict[str, Any] = {"setup_s": round(setup_s, 3), "search_budget_s": round(search_s, 3)}

    def scored(trial: dict[str, Any]) -> None:
        firsts.append(trial)
        timings.setdefault("first_result_s", round(budget.elapsed(), 3))
        logger.submit(trial)
        best = max(t["score"] for t in firsts)
        lease.update({"progress": {"trials": len(firsts), "best": -best if lower else best}})

    searching = budget.clock()
    first_results(data, pool, scored)
    timings["first_results_s"] = round(budget.clock() - searching, 3)
    trials = _search_on_ray(settings, job_id, request, prep, budget, lease, ray_start, data, pool, firsts,
                            logger, timings)
    if lease.lost.is_set():
        lease.check()  # the search stopped because the job is no longer ours: say so, not "no trial"
    timings["search_s"] = round(budget.clock() - searching, 3)
    trials = sorted(firsts + trials, key=lambda t: (t["complete"], t["score"]), reverse=True)
    timings["gpu_trials"] = sum(1 for t in trials if t["gpu"] > 0)
    return trials, timings


def _search_on_ray(settings: Settings, job_id: str, request: JobRequest, prep: Prepared, budget: JobBudget,
                   lease: Lease, ray_start: RayStart | None, data: SearchData, pool: list[str],
                   firsts: list[dict[str, Any]], logger: TrialLogger, timings: dict[str, Any]) -> list[dict[str, Any]]:
    """The distributed search after the first results, when the time left is worth it; its trials."""
    from dataclasses import replace

    if ray_start is None:  # a caller without a runner's main thread: Ray is started here, if needed
        if not budget.worth_searching(ray_up=_ray_up()):
            timings["search_skipped"] = "the budget left no time for it"
            return []
        ray_start = RayStart(settings)
        ray_start.start()
    if not ray_start.wait(budget.search_s()):
        timings["search_skipped"] = "the budget left no time for it" if ray_start.skipped else \
            f"Ray was not up in time ({ray_start.error or 'still starting'})"
        return []
    timings["ray_start_s"] = ray_start.start_s
    if not budget.worth_searching(ray_up=True) or lease.lost.is_set():
        timings["search_skipped"] = "no time was left for it after Ray started"
        return []
    import ray

    from nimbus.automl import hooks
    from nimbus.automl.gpu import search_device

    resources = ray.cluster_resources()
    concurrency = max(1, int(resources.get("CPU", os.cpu_count() or 1)))  # a trial takes a CPU (GPU ones too)
    device = search_device(request.gpu, resources.get("GPU", 0.0))
    search_s = budget.search_s()
    lease.update({"budget.search_s": search_s})
    data = replace(data, deadline=time.time() + search_s)
    storage = settings.home / "automl" / job_id  # Tune's own bookkeeping, next to the other local state
    storage.mkdir(parents=True, exist_ok=True)
    best = max(t["score"] for t in firsts) if firsts else None
    hooks.ACTIVE[job_id] = {"logger": logger, "steps": len(data.steps), "budget": budget,
                            "deadline": budget.clock() + search_s, "lower": sign(prep.metric) < 0,
                            "progress": lambda p: lease.update({"progress": p}), "stop": lease.lost}
    try:
        max_trials = None if request.max_trials is None else max(0, request.max_trials - len(firsts))
        if max_trials == 0:
            return []
        return run_search(data, pool, search_s, max_trials, concurrency, hooks.Progress(job_id, len(firsts), best),
                          storage=str(storage), stopper=hooks.Budget(job_id), device=device,
                          points=defaults_to_search(pool, firsts))
    finally:
        hooks.ACTIVE.pop(job_id, None)


def _ray_up() -> bool:
    import ray

    return ray.is_initialized()


def _run(settings: Settings, job_id: str, request: JobRequest, budget: JobBudget, owner: str,
         lease: Lease, ray_start: RayStart | None = None) -> dict[str, Any]:

    with logs.step("automl", job_id, "prepare") as counts:
        prep = _prepare(settings, request, budget, lease)
        counts.update(rows=prep.sampled.rows, train_rows=len(prep.x_train), search_rows=len(prep.search.x))
    logger = TrialLogger(settings, job_id, prep.metric)
    try:
        return _finish_run(settings, job_id, request, budget, owner, lease, ray_start, prep, logger)
    finally:
        logger.close()  # a job that failed half-way leaves no logging thread behind in its runner


def _finish_run(settings: Settings, job_id: str, request: JobRequest, budget: JobBudget, owner: str, lease: Lease,
                ray_start: RayStart | None, prep: Prepared, logger: TrialLogger) -> dict[str, Any]:
    from nimbus.automl import explain, export
    from nimbus.automl.refit import refit
    from nimbus.automl.report import diagnostics, publish

    with logs.step("automl", job_id, "search") as counts:
        trials, timings = _search(settings, job_id, request, prep, budget, lease, ray_start, logger)
        counts["trials"] = len(trials)
    lease.check()  # cancelled or lost during the search: stop here
    with logs.step("automl", job_id, "ensemble"):
        trials = _with_ensemble(prep, trials, budget, logger, timings, request.max_trials)
    seconds_left = budget.refit_s()
    x_search = prep.search.x
    winner = _affordable_winner(trials, seconds_left, scale=1.5 * len(prep.x_train) / max(1, len(x_search)))
    # Refit on as many training rows as the winner's own measured speed fits in the time left, at half
    # that speed (fit cost grows faster than the rows for trees); never fewer than the search saw.
    steps = prep.search.steps
    fitted = sum(len(steps[i][0]) for i in range(min(len(steps), max(1, winner["steps"]))))
    max_rows = max(len(x_search), int(seconds_left / 2 * fitted / max(winner["fit_s"], 1e-3)))
    clock = budget.clock()
    with logs.step("automl", job_id, "refit", max_rows=max_rows):
        model, refit_info = refit(settings, prep.sampled, winner["params"], prep.prof, prep.metric,
                                  deadline=budget.refit_deadline, max_rows=max_rows)
    lease.update({"refit": refit_info})
    fit_s = budget.clock() - clock
    timings["refit_s"] = round(fit_s, 3)
    with logs.step("automl", job_id, "evaluate", test_rows=len(prep.x_test)):
        test = evaluate(model, prep.x_test, prep.y_test, prep.metric)
        importances = permutation_importances(model, prep.x_test, prep.y_test, prep.metric)
    timings["evaluate_s"] = round(budget.clock() - clock - fit_s, 3)
    clock = budget.clock()
    with logs.step("automl", job_id, "explain_export"):
        size = _megabytes(model)  # what logging and publishing it will cost is kept from the extras
        onnx = export.winner_to_onnx(model, winner["params"]["algorithm"], prep.prof, prep.x_test,
                                     0.5 * budget.extras_s(size))
        explanations = explain.explain(model, prep.prof.task, prep.x_train, prep.x_test,
                                       0.4 * budget.extras_s(size))
        curve = explain.learning_curve(model, prep.x_train, prep.y_train, prep.metric, prep.prof.task, fit_s,
                                       budget.extras_s(size))
    timings["explain_export_s"] = round(budget.clock() - clock, 3)
    clock = budget.clock()
    logger.finish(trials)
    name = request.model_name(job_id)
    check_model_owner(settings, name, owner)  # again: another owner's job may have registered it since submit
    lease.check()  # a cancelled or lost job registers nothing
    with logs.step("automl", job_id, "register", trials=len(trials)):
        version, run_id = register_winner(settings, job_id, name, winner, model, prep.x_train, test,
                                          {"profile": prep.prof.as_dict(), "test": test, "importances": importances,
                                           "trials": len(trials)}, onnx.model, x_reference=prep.x_test)
    claim_model(settings, name, owner)
    timings["track_s"] = round(budget.clock() - clock, 3)
    direction = sign(prep.metric)
    leaderboard = [{"rank": n + 1, "algorithm": t["params"]["algorithm"], "params": t["params"],
                    "score": direction * t["score"], "complete": t["complete"], "fit_s": round(t["fit_s"], 3),
                    "node": t["node"], "chosen": t["params"] == winner["params"]} for n, t in enumerate(_distinct(trials))]
    report = {"job": job_id, "profile": prep.prof.as_dict(), "metric": prep.metric, "leaderboard": leaderboard,
              "trials": len(trials), "test": test, "importances": importances,
              "diagnostics": diagnostics(model, prep.x_test, prep.y_test, prep.prof.task),
              "explanations": explanations, "learning_curve": curve, "onnx": onnx.info}
    with logs.step("automl", job_id, "publish"):
        exports = publish(settings, job_id, report, model, onnx)
    chosen = next(row for row in leaderboard if row["chosen"])
    return {"timings": timings, "leaderboard": leaderboard, "trials": len(trials), "winner": chosen, "test": test,
            "importances": importances, "model": {"name": name, "version": version, "run_id": run_id},
            "exports": exports, "progress": {"trials": len(trials), "best": leaderboard[0]["score"]}}


def _megabytes(model: Any) -> float:
    """The fitted model's size as a pickle (tens of milliseconds for tens of megabytes)."""
    import pickle

    return len(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)) / 2**20


ENSEMBLE_SHARE = 0.4  # of the time left for the refit, an ensemble's evaluation may take at most this much


def _with_ensemble(prep: Prepared, trials: list[dict[str, Any]], budget: JobBudget, logger: TrialLogger,
                   timings: dict[str, Any], max_trials: int | None) -> list[dict[str, Any]]:
    """The trials, with the ensemble of the best of them when it could be evaluated in time."""
    from nimbus.automl.ensemble import ensemble_trial

    clock = budget.clock()
    if max_trials is not None and len(trials) >= max_trials:  # the ensemble is a configuration too
        return trials
    built = ensemble_trial(prep.search, trials, ENSEMBLE_SHARE * budget.refit_s())
    timings["ensemble_s"] = round(budget.clock() - clock, 3)
    if built is None:
        return trials
    logger.submit(built)
    return sorted([*trials, built], key=lambda t: (t["complete"], t["score"]), reverse=True)


def _distinct(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trials with each configuration once (the search may propose one again), the best kept."""
    import json

    seen: set[str] = set()
    out = []
    for trial in trials:
        key = json.dumps(trial["params"], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(trial)
    return out


def _affordable_winner(trials: list[dict[str, Any]], seconds_left: float, scale: float) -> dict[str, Any]:
    """The best trial whose refit on all training rows should fit in the time left.

    The refit is estimated from the trial's own fit time, scaled to the full training set;
    when none fits, the quickest of the five best is taken, so the budget still holds."""
    complete = [t for t in trials if t["complete"]] or trials
    for trial in complete:
        if trial["fit_s"] / max(1, trial["steps"]) * scale <= seconds_left:
            return trial
    return min(complete[:5], key=lambda t: t["fit_s"] / max(1, t["steps"]))
