"""AutoML jobs as records: the request (checked before a job exists) and the job's document in
MongoDB (status, progress, leaderboard, winner); the runner (``runner.py``) fills it in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field
from pymongo import ASCENDING, ReturnDocument
from pymongo.collection import Collection

from nimbus.automl.algorithms import choose
from nimbus.automl.data import peek
from nimbus.automl.metrics import check_metric, sign
from nimbus.automl.profile import profile
from nimbus.config import Settings
from nimbus.errors import InvalidInput, NotFound
from nimbus.stores.documents import Collections, DocumentStore


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

    def model_name(self, job_id: str) -> str:
        return self.name or f"automl-{job_id}"


def jobs(settings: Settings) -> Collection:
    return DocumentStore.for_settings(settings).collection(Collections.AUTOML_JOBS)


def submit(settings: Settings, request: JobRequest) -> dict[str, Any]:
    """Check the request against the data's first rows (bounded: the dataset may be any size),
    then record a queued job; bad input makes no job."""
    frame, rows, whole = peek(settings, request.dataset)
    # Past the first rows the class checks wait for the job's full pass (a sorted file may hold
    # its other classes further on); a dataset read whole is checked completely here.
    prof = profile(frame, request.target, request.task, rows=rows, partial=not whole)  # type: ignore[arg-type]
    metric = check_metric(prof.task, request.metric, prof.classes)
    choose(prof, request.include, request.exclude)
    job_id = uuid.uuid4().hex[:12]
    doc = {"_id": job_id, "status": "queued", "request": request.model_dump(), "metric": metric,
           "profile": prof.as_dict(), "created_at": datetime.now(UTC),
           "progress": {"trials": 0, "best": None}}
    jobs(settings).insert_one(doc)
    return doc


def get_job(settings: Settings, job_id: str) -> dict[str, Any]:
    doc = jobs(settings).find_one({"_id": job_id})
    if doc is None:
        raise NotFound(f"no AutoML job {job_id!r}")
    return doc


def update(settings: Settings, job_id: str, fields: dict[str, Any]) -> None:
    jobs(settings).update_one({"_id": job_id}, {"$set": fields})


def claim_queued(settings: Settings) -> dict[str, Any] | None:
    """The oldest queued job, now marked running (for a worker); None when none is queued."""
    return jobs(settings).find_one_and_update({"status": "queued"}, {"$set": {"status": "running"}},
                                              sort=[("created_at", ASCENDING)], return_document=ReturnDocument.AFTER)


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
    lower = sign(next(iter(metrics))) < 0 if len(metrics) == 1 else False
    rows.sort(key=lambda r: r["test"]["value"], reverse=not lower)
    return rows
