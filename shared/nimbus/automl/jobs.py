"""AutoML jobs: submitted (checked before a job exists), run on Ray, tracked in MLflow,
kept in MongoDB (status, progress, leaderboard, winner)."""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from nimbus.automl.data import Scan, peek, scan
from nimbus.automl.profile import Profile, check_metric, profile
from nimbus.automl.refit import refit
from nimbus.automl.search import LOWER_IS_BETTER, SearchData, plan_steps, run_search, scorer_name
from nimbus.automl.space import algorithms
from nimbus.config import Settings
from nimbus.errors import InvalidInput, NimbusError, NotFound
from nimbus.stores.documents import DocumentStore

COLLECTION = "automl_jobs"
AFTER_EXTRAS_S = 3.0  # what logging, registering and publishing the winner need after explanations and exports
SEARCH_MAX_ROWS = 200_000  # the search works on a stratified sample this size at most; the winner refits on more
SEARCH_MIN_ROWS = 5_000
SEARCH_ROWS_PER_S = 250  # search sample rows per second of budget (a 60 s job: 15k rows)


class JobRequest(BaseModel):
    dataset: str = Field(description="s3://bucket/key or a local path (CSV or Parquet).",
                         examples=["s3://nimbus-data/datasets/churn.csv"])
    target: str = Field(min_length=1, examples=["churned"])
    task: str | None = Field(default=None, pattern="^(classification|regression)$",
                             description="Inferred from the target when absent.")
    metric: str | None = Field(default=None, examples=["roc_auc"])
    budget_s: float = Field(default=60, ge=10, le=6 * 3600, description="Wall-clock budget of the whole job.")
    max_trials: int | None = Field(default=None, ge=1, le=10_000)
    include: list[str] | None = Field(default=None, examples=[["hist_gb", "logistic"]])
    exclude: list[str] | None = None
    gpu: bool | None = Field(default=None, description="Use a GPU when present (default: when present).")
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.\-]{1,64}$",
                             description="Registered model name (default automl-<job id>).")


def read_dataset(settings: Settings, location: str, target: str, task: str | None = None) -> Scan:
    """One bounded-memory pass over the dataset: counts and samples (see ``nimbus.automl.data``)."""
    return scan(settings, location, target, task)


def search_rows(budget_s: float) -> int:
    """Rows the search works on: enough to rank configurations, few enough that a first (cheapest)
    step is seconds and the budget sees many configurations; the winner refits on more."""
    return int(min(SEARCH_MAX_ROWS, max(SEARCH_MIN_ROWS, SEARCH_ROWS_PER_S * budget_s)))


def _jobs(settings: Settings):  # noqa: ANN202
    return DocumentStore.for_settings(settings).collection(COLLECTION)


def submit(settings: Settings, request: JobRequest) -> dict[str, Any]:
    """Check the request against the data's first rows (bounded: the dataset may be any size),
    then record a queued job; bad input makes no job."""
    frame, rows, whole = peek(settings, request.dataset)
    # Past the first rows the class checks wait for the job's full pass (a sorted file may hold
    # its other classes further on); a dataset read whole is checked completely here.
    prof = profile(frame, request.target, request.task, rows=rows, partial=not whole)  # type: ignore[arg-type]
    metric = check_metric(prof.task, request.metric, prof.classes)
    algorithms(prof, request.include, request.exclude)
    job_id = uuid.uuid4().hex[:12]
    doc = {"_id": job_id, "status": "queued", "request": request.model_dump(), "metric": metric,
           "profile": prof.as_dict(), "created_at": datetime.now(UTC),
           "progress": {"trials": 0, "best": None}}
    _jobs(settings).insert_one(doc)
    return doc


def get_job(settings: Settings, job_id: str) -> dict[str, Any]:
    doc = _jobs(settings).find_one({"_id": job_id})
    if doc is None:
        raise NotFound(f"no AutoML job {job_id!r}")
    return doc


def ray_session(settings: Settings) -> None:
    import os

    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    if settings.ray_address:  # a cluster: "host:port" (started with `ray start`) or "ray://host:10001"
        ray.init(address=settings.ray_address, log_to_driver=False)
    else:
        # "local": always a fresh in-process cluster, never one `ray start` left on this machine.
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)


class TrialLogger:
    """Logs each finished trial as an MLflow run while the search goes on (overlapping the two),
    and measures what a trial costs to log, so the search can stop in time for the rest."""

    THREADS = 4  # a trial is three small HTTP calls: several in flight hide the round trips

    def __init__(self, settings: Settings, job_id: str, metric: str) -> None:
        import queue

        import mlflow

        mlflow.set_tracking_uri(settings.tracking_uri)
        self.client = mlflow.MlflowClient(settings.tracking_uri, settings.registry_uri)
        self.experiment_id = mlflow.set_experiment(f"automl-{job_id}").experiment_id
        self.job_id, self.metric = job_id, metric
        self.queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self.submitted: set[str] = set()
        self.pending = 0
        self.cost_s = 0.05  # per trial and thread, refined as trials are logged
        self._threads = [threading.Thread(target=self._drain, name=f"mlflow-{job_id}-{n}", daemon=True)
                         for n in range(self.THREADS)]
        for thread in self._threads:
            thread.start()

    def submit(self, trial: dict[str, Any]) -> None:
        if trial["trial_id"] in self.submitted:  # seen by the callback already
            return
        self.submitted.add(trial["trial_id"])
        self.pending += 1
        self.queue.put(trial)

    def _drain(self) -> None:
        while (trial := self.queue.get()) is not None:
            start = time.monotonic()
            self._log(trial)
            self.cost_s = 0.8 * self.cost_s + 0.2 * (time.monotonic() - start)
            self.pending -= 1

    def _log(self, t: dict[str, Any]) -> None:  # three calls a trial: create, one batch, end
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{t['params']['algorithm']}",
                                     tags={"nimbus.job": self.job_id, "nimbus.complete": str(t["complete"])})
        value = -t["score"] if self.metric in LOWER_IS_BETTER else t["score"]
        self.client.log_batch(run.info.run_id,
                              metrics=[Metric(f"cv_{self.metric}", value, now, 0), Metric("fit_s", t["fit_s"], now, 0),
                                       Metric("steps", t["steps"], now, 0)],
                              params=[Param(k, str(v)) for k, v in t["params"].items()])
        self.client.set_terminated(run.info.run_id)

    def backlog_s(self) -> float:
        return self.pending * self.cost_s / self.THREADS

    def finish(self, trials: list[dict[str, Any]]) -> None:
        """Log whatever the callbacks did not see, then wait for the queue to empty."""
        for trial in trials:
            self.submit(trial)
        for _ in self._threads:
            self.queue.put(None)
        for thread in self._threads:
            thread.join()


def run_job(settings: Settings, job_id: str) -> dict[str, Any]:
    """Search, track, refit, evaluate, register. Ends within the budget (it reserves refit time)."""
    start = time.monotonic()
    from nimbus.automl.explain import warm_up

    threading.Thread(target=warm_up, name="automl-warm-up", daemon=True).start()  # during the search
    job = get_job(settings, job_id)
    request = JobRequest.model_validate(job["request"])
    jobs = _jobs(settings)
    jobs.update_one({"_id": job_id}, {"$set": {"status": "running", "started_at": datetime.now(UTC)}})
    from threadpoolctl import threadpool_limits

    try:
        with threadpool_limits(1):  # as in the trials: OpenMP threads on a busy machine measured 7-40x slower
            result = _run(settings, job_id, request, job["metric"], start)
    except Exception as exc:
        jobs.update_one({"_id": job_id}, {"$set": {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                                    "finished_at": datetime.now(UTC)}})
        raise
    jobs.update_one({"_id": job_id}, {"$set": {**result, "status": "succeeded", "finished_at": datetime.now(UTC),
                                                "elapsed_s": time.monotonic() - start}})
    return get_job(settings, job_id)


def _run(settings: Settings, job_id: str, request: JobRequest, metric: str, start: float) -> dict[str, Any]:
    import os

    # One bounded-memory pass: exact counts, a training sample sized to memory, a disjoint test sample.
    sampled = read_dataset(settings, request.dataset, request.target, request.task)
    training = sampled.training()
    prof = profile(training, request.target, request.task, rows=sampled.rows,  # type: ignore[arg-type]
                   class_counts=sampled.class_counts)
    metric = check_metric(prof.task, request.metric, prof.classes)  # submit saw the first rows only
    x_train, y_train = training.drop(columns=[request.target]), training[request.target]
    x_test, y_test = sampled.test.drop(columns=[request.target]), sampled.test[request.target]
    search = sampled.search_sample(search_rows(request.budget_s))  # stratified: rare classes kept
    x_search = search.drop(columns=[request.target]).reset_index(drop=True)
    y_search = search[request.target].reset_index(drop=True)
    _jobs(settings).update_one({"_id": job_id}, {"$set": {"profile": prof.as_dict(), "metric": metric,
                                                          "data": {**sampled.summary(), "search_rows": len(search)}}})
    data = SearchData(x_search, y_search, plan_steps(y_search, prof), prof, metric)

    ray_session(settings)
    import ray

    from nimbus.automl.gpu import search_device

    resources = ray.cluster_resources()
    concurrency = max(1, int(resources.get("CPU", os.cpu_count() or 1)))  # a trial takes a CPU (GPU ones too)
    device = search_device(request.gpu, resources.get("GPU", 0.0))
    elapsed = time.monotonic() - start
    # Keep 30% of the budget (at least 6 s; a short job skips what does not fit) for the refit, test,
    # explanations, ONNX and registration;
    # the trial logging overlaps the search, whose stopper also leaves time for the logging backlog.
    search_budget = max(5.0, request.budget_s - max(6.0, request.budget_s * 0.3) - elapsed)
    pool = algorithms(prof, request.include, request.exclude)
    storage = settings.home / "automl" / job_id  # Tune's own bookkeeping, next to the other local state
    storage.mkdir(parents=True, exist_ok=True)
    clock = time.monotonic()
    from nimbus.automl import hooks

    logger = TrialLogger(settings, job_id, metric)
    hooks.ACTIVE[job_id] = {"logger": logger, "steps": len(data.steps), "deadline": clock + search_budget,
                            "lower": metric in LOWER_IS_BETTER,
                            "progress": lambda p: _jobs(settings).update_one({"_id": job_id}, {"$set": {"progress": p}})}
    try:
        trials = run_search(data, pool, search_budget, request.max_trials, concurrency, hooks.Progress(job_id),
                            storage=str(storage), stopper=hooks.Budget(job_id), device=device)
    finally:
        hooks.ACTIVE.pop(job_id, None)
    timings = {"setup_s": elapsed, "search_budget_s": search_budget, "search_s": time.monotonic() - clock,
               "gpu_trials": sum(1 for t in trials if t["gpu"] > 0)}
    if not trials:
        raise NimbusError("no trial finished within the budget; give the job a larger budget")
    reserve = max(6.0, 0.2 * request.budget_s)  # evaluation, explanations, exports and tracking after the refit
    seconds_left = request.budget_s - (time.monotonic() - start) - reserve
    winner = _affordable_winner(trials, seconds_left, scale=1.5 * len(x_train) / max(1, len(x_search)))
    # Refit on as many training rows as the winner's own measured speed fits in the time left, at half
    # that speed (fit cost grows faster than the rows for trees); never fewer than the search saw.
    fitted = sum(len(data.steps[i][0]) for i in range(min(len(data.steps), max(1, winner["steps"]))))
    max_rows = max(len(x_search), int(seconds_left / 2 * fitted / max(winner["fit_s"], 1e-3)))
    clock = time.monotonic()
    model, refit_info = refit(settings, sampled, winner["params"], prof, metric,
                              deadline=start + request.budget_s - reserve, max_rows=max_rows)
    _jobs(settings).update_one({"_id": job_id}, {"$set": {"refit": refit_info}})
    fit_s = time.monotonic() - clock
    test = evaluate(model, x_test, y_test, metric)
    importances = permutation_importances(model, x_test, y_test, metric)
    timings["refit_evaluate_s"] = time.monotonic() - clock
    clock = time.monotonic()
    from nimbus.automl import explain, export

    left = lambda: request.budget_s - (time.monotonic() - start) - AFTER_EXTRAS_S  # noqa: E731
    onnx = export.to_onnx_within(model, prof, x_test, left())
    explanations = explain.explain(model, prof.task, x_train, x_test, 0.4 * left())
    curve = explain.learning_curve(model, x_train, y_train, metric, prof.task, fit_s, left())
    timings["explain_export_s"] = time.monotonic() - clock
    clock = time.monotonic()
    logger.finish(trials)
    version, run_id = track(settings, job_id, request, prof, metric, trials, model, x_train, test, importances,
                            onnx.model)
    timings["track_s"] = time.monotonic() - clock
    from nimbus.automl.report import diagnostics, publish

    sign = -1 if metric in LOWER_IS_BETTER else 1
    leaderboard = [{"rank": n + 1, "algorithm": t["params"]["algorithm"], "params": t["params"],
                    "score": sign * t["score"], "complete": t["complete"], "fit_s": round(t["fit_s"], 3),
                    "node": t["node"], "chosen": t is winner} for n, t in enumerate(trials)]
    report = {"job": job_id, "profile": prof.as_dict(), "metric": metric, "leaderboard": leaderboard,
              "trials": len(trials), "test": test, "importances": importances,
              "diagnostics": diagnostics(model, x_test, y_test, prof.task), "explanations": explanations,
              "learning_curve": curve, "onnx": onnx.info}
    exports = publish(settings, job_id, report, model, onnx)
    chosen = next(row for row in leaderboard if row["chosen"])
    return {"timings": timings, "leaderboard": leaderboard, "trials": len(trials), "winner": chosen, "test": test,
            "importances": importances, "model": {"name": request.name or f"automl-{job_id}", "version": version,
                                                    "run_id": run_id},
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


def _metric(metric: str, y: np.ndarray, predicted: np.ndarray, proba: np.ndarray | None, classes: Any) -> float:
    from sklearn import metrics as m

    if metric == "accuracy":
        return float(m.accuracy_score(y, predicted))
    if metric == "balanced_accuracy":
        return float(m.balanced_accuracy_score(y, predicted))
    if metric == "f1_macro":
        return float(m.f1_score(y, predicted, average="macro"))
    if metric == "roc_auc":
        return float(m.roc_auc_score(y == classes[1], proba[:, 1]))
    if metric == "roc_auc_ovr":
        return float(m.roc_auc_score(y, proba, multi_class="ovr", labels=classes))
    if metric == "log_loss":
        return float(m.log_loss(y, proba, labels=classes))
    if metric == "r2":
        return float(m.r2_score(y, predicted))
    if metric == "rmse":
        return float(np.sqrt(m.mean_squared_error(y, predicted)))
    return float(m.mean_absolute_error(y, predicted))


def evaluate(model: Any, x: pd.DataFrame, y: pd.Series, metric: str, rounds: int = 200) -> dict[str, Any]:
    """The held-out metric with a 95% bootstrap interval (the model predicts once; the metric is resampled)."""
    truth = np.asarray(y)
    predicted = model.predict(x)
    proba = model.predict_proba(x) if metric in ("roc_auc", "roc_auc_ovr", "log_loss") else None
    classes = getattr(model, "classes_", None)
    value = _metric(metric, truth, predicted, proba, classes)
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(rounds):
        rows = rng.integers(0, len(truth), len(truth))
        try:
            samples.append(_metric(metric, truth[rows], predicted[rows], None if proba is None else proba[rows],
                                   classes))
        except ValueError:  # a resample missing a class: skip it
            continue
    low, high = np.percentile(samples, [2.5, 97.5]) if samples else (value, value)
    return {"metric": metric, "value": value, "ci95": [float(low), float(high)], "rows": int(len(truth))}


def permutation_importances(model: Any, x: pd.DataFrame, y: pd.Series, metric: str) -> list[dict[str, Any]]:
    from sklearn.inspection import permutation_importance

    sample = min(len(x), 1000)  # bounded cost: the refit already spent most of the reserve
    result = permutation_importance(model, x.iloc[:sample], y.iloc[:sample], scoring=scorer_name(metric),
                                    n_repeats=3, random_state=0)
    order = np.argsort(-result.importances_mean)
    return [{"feature": str(x.columns[i]), "importance": float(result.importances_mean[i]),
             "std": float(result.importances_std[i])} for i in order]


def track(settings: Settings, job_id: str, request: JobRequest, prof: Profile, metric: str,
          trials: list[dict[str, Any]], model: Any, x_train: pd.DataFrame, test: dict[str, Any],
          importances: list[dict[str, Any]], onnx: bytes | None = None) -> tuple[str, str]:
    """The winner's run in the job's experiment (trials are logged by TrialLogger): model, metrics, report."""
    import json

    import mlflow
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.registry_uri)
    mlflow.set_experiment(f"automl-{job_id}")
    name = request.name or f"automl-{job_id}"
    example = x_train.head(5)
    output = model.predict_proba(example)[:, -1] if hasattr(model, "predict_proba") else model.predict(example)
    with mlflow.start_run(run_name="winner", tags={"nimbus.job": job_id}) as run, \
            tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params({f"winner_{k}": v for k, v in trials[0]["params"].items()})
        mlflow.log_metric(f"test_{metric}", test["value"])
        mlflow.log_metric(f"test_{metric}_ci_low", test["ci95"][0])
        mlflow.log_metric(f"test_{metric}_ci_high", test["ci95"][1])
        info = mlflow.sklearn.log_model(model, name="model", input_example=example,
                                        signature=infer_signature(example, output), registered_model_name=name,
                                        skops_trusted_types=_trusted_types(model))
        report = Path(tmp) / "report.json"
        report.write_text(json.dumps({"profile": prof.as_dict(), "test": test, "importances": importances,
                                      "trials": len(trials)}, default=str))
        mlflow.log_artifact(str(report), artifact_path="report")
        if onnx is not None:
            (Path(tmp) / "model.onnx").write_bytes(onnx)
            mlflow.log_artifact(str(Path(tmp) / "model.onnx"), artifact_path="onnx")
    return str(info.registered_model_version), run.info.run_id


def _trusted_types(model: Any) -> list[str] | None:
    """Types skops asks us to vouch for when saving (we built these models ourselves)."""
    try:
        import skops.io as sio

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.skops"
            sio.dump(model, path)
            return sio.get_untrusted_types(file=path) or None
    except Exception:
        return None


def compare(settings: Settings, job_ids: list[str]) -> list[dict[str, Any]]:
    """Finished jobs side by side: winner, held-out metric with its interval, trials, time."""
    if not job_ids:
        raise InvalidInput("give at least one job id to compare")
    rows = []
    for job_id in job_ids:
        job = get_job(settings, job_id)
        if job["status"] != "succeeded":
            raise InvalidInput(f"job {job_id} is {job['status']}; only finished jobs can be compared")
        rows.append({"job": job_id, "dataset": job["request"]["dataset"], "target": job["request"]["target"],
                     "winner": job["winner"]["algorithm"], "test": job["test"], "trials": job["trials"],
                     "elapsed_s": job.get("elapsed_s"), "model": job["model"]})
    metrics = {r["test"]["metric"] for r in rows}
    lower = next(iter(metrics)) in LOWER_IS_BETTER if len(metrics) == 1 else False
    rows.sort(key=lambda r: r["test"]["value"], reverse=not lower)
    return rows


def run_in_background(settings: Settings, job_id: str) -> threading.Thread:
    """Run a job in this process (the local API); on a cluster a worker does the same call."""
    def target() -> None:
        try:
            run_job(settings, job_id)
        except Exception:  # recorded in the job document by run_job
            pass

    thread = threading.Thread(target=target, name=f"automl-{job_id}", daemon=True)
    thread.start()
    return thread
