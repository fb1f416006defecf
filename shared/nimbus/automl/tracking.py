"""An AutoML job in MLflow, through :class:`nimbus.stores.registry.Registry`: every trial a run of
the job's experiment (logged while the search goes on), and the winner's run, which registers
the refit model with its held-out metric, its report, its ONNX export and its drift reference."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import pandas as pd

from nimbus.automl.metrics import sign
from nimbus.config import Settings
from nimbus.stores.registry import Registry

log = logging.getLogger("nimbus.automl.tracking")
JOB_TAG = "nimbus.job"  # on the job's runs and on the version it registered: the AutoML job's id


def registered_by(settings: Settings, job_id: str, name: str) -> tuple[str, str] | None:
    """(version, run id) of the version of ``name`` that job ``job_id`` registered, if any."""
    for info in Registry.for_settings(settings).versions(name):
        if info.tags.get(JOB_TAG) == job_id:
            return info.version, info.run_id
    return None


def experiment_name(job_id: str) -> str:
    return f"automl-{job_id}"


class TrialLogger:
    """Logs each finished trial as an MLflow run while the search goes on (overlapping the two),
    and measures what a trial costs to log, so the search can stop in time for the rest."""

    THREADS = 4  # a trial is three small HTTP calls: several in flight hide the round trips

    def __init__(self, settings: Settings, job_id: str, metric: str) -> None:
        self.settings = settings
        self.experiment = experiment_name(job_id)
        self.job_id, self.metric = job_id, metric
        # MLflow's import and the experiment's creation (seconds in a fresh process) happen in a thread
        # of their own, overlapping the first fits; the logging threads wait for it.
        self._ready = threading.Event()
        self._setup_error: BaseException | None = None
        threading.Thread(target=self._setup, name=f"mlflow-{job_id}-setup", daemon=True).start()
        self.queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self.submitted: set[str] = set()
        self.pending = 0
        self.cost_s = 0.05  # per trial and thread, refined as trials are logged
        self._closed = False
        self._threads = [threading.Thread(target=self._drain, name=f"mlflow-{job_id}-{n}", daemon=True)
                         for n in range(self.THREADS)]
        for thread in self._threads:
            thread.start()

    def _setup(self) -> None:
        try:
            self.registry = Registry.for_settings(self.settings)
            self.registry.experiment_id(self.experiment)  # created once, before the threads log into it
        except BaseException as exc:  # noqa: BLE001 - raised where the job waits for the logger (finish)
            self._setup_error = exc
        finally:
            self._ready.set()

    def submit(self, trial: dict[str, Any]) -> None:
        if trial["trial_id"] in self.submitted:  # seen by the callback already
            return
        self.submitted.add(trial["trial_id"])
        self.pending += 1
        self.queue.put(trial)

    def _drain(self) -> None:
        self._ready.wait()
        while (trial := self.queue.get()) is not None:
            if self._setup_error is not None:
                self.pending -= 1
                continue
            start = time.monotonic()
            self._log(trial)
            self.cost_s = 0.8 * self.cost_s + 0.2 * (time.monotonic() - start)
            self.pending -= 1

    def _log(self, t: dict[str, Any]) -> None:
        self.registry.log_run(self.experiment, f"trial-{t['params']['algorithm']}",
                              tags={JOB_TAG: self.job_id, "nimbus.complete": str(t["complete"])},
                              metrics={f"cv_{self.metric}": sign(self.metric) * t["score"], "fit_s": t["fit_s"],
                                       "steps": t["steps"]},
                              params=t["params"])

    def backlog_s(self) -> float:
        """Seconds the trials still queued need to be logged."""
        return self.pending * self.cost_s / self.THREADS

    def finish(self, trials: list[dict[str, Any]]) -> None:
        """Log whatever the callbacks did not see, then wait for the queue to empty."""
        for trial in trials:
            self.submit(trial)
        self.close()
        if self._setup_error is not None:
            raise self._setup_error

    def close(self) -> None:
        """End the logging threads once what was submitted is logged (again: nothing more happens)."""
        if not self._closed:
            self._closed = True
            for _ in self._threads:
                self.queue.put(None)
        for thread in self._threads:
            thread.join()


def register_winner(settings: Settings, job_id: str, name: str, winner: dict[str, Any], model: Any,
                    x_train: pd.DataFrame, test: dict[str, Any], report: dict[str, Any],
                    onnx: bytes | None = None, x_reference: pd.DataFrame | None = None) -> tuple[str, str]:
    """The winner's run in the job's experiment: its parameters, held-out metric, the model
    (registered as a new version of ``name``), a report, the ONNX export and the drift reference
    (:func:`nimbus.serving.samples.training_reference`) of ``x_reference``, the held-out rows (default the
    training rows): scores of rows the model was fitted on are more confident than any it will serve, so
    a reference of them would make every live output look drifted; (version, run id).

    Once per job: a version tagged with this job (registered by an earlier attempt whose runner died
    before it could record it) is returned instead of registering another."""
    from nimbus.monitoring.drift import REFERENCE_PATH
    from nimbus.serving.samples import training_reference

    earlier = registered_by(settings, job_id, name)
    if earlier is not None:
        return earlier
    example = x_train.head(5)
    output = model.predict_proba(example)[:, -1] if hasattr(model, "predict_proba") else model.predict(example)
    metric = test["metric"]
    with Registry.for_settings(settings).tracked_run(experiment_name(job_id), "winner",
                                                     tags={JOB_TAG: job_id}) as run:
        run.log_params({f"winner_{k}": v for k, v in winner["params"].items()})
        run.log_metrics({f"test_{metric}": test["value"], f"test_{metric}_ci_low": test["ci95"][0],
                         f"test_{metric}_ci_high": test["ci95"][1]})
        version = run.log_sklearn(model, example, output, name, version_tags={JOB_TAG: job_id})
        run.log_json(report, "report/report.json")
        try:  # the monitor's drift check reads it; a frame it cannot summarise never fails the job
            run.log_json(training_reference(model, x_train if x_reference is None else x_reference),
                         REFERENCE_PATH)
        except Exception as exc:  # noqa: BLE001 - the version is then checked as no_reference
            log.warning("job %s: no drift reference logged for %s v%s: %s", job_id, name, version, exc)
        if onnx is not None:
            run.log_bytes(onnx, "onnx/model.onnx")
    return version, run.run_id
