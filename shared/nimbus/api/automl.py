"""The ``automl`` function's app: submit a dataset, follow the job, read its leaderboard, compare jobs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Query, UploadFile
from pydantic import BaseModel, Field

from nimbus.api.auth import AUTH_ERRORS, AutomlKey, Caller
from nimbus.api.common import SettingsDep, create_app
from nimbus.automl.cluster import dispatch, on_cancel
from nimbus.automl.inputs import store_upload
from nimbus.automl.jobs import STATUSES, JobRequest, cancel, compare, get_job, list_jobs, public_job, submit
from nimbus.config import get_settings
from nimbus.errors import InvalidInput


class JobAccepted(BaseModel):
    job_id: str = Field(examples=["3f2a9c0d11be"])
    status: str = Field(examples=["queued"])
    task: str = Field(examples=["classification"])
    metric: str = Field(examples=["roc_auc"])


class JobPublic(BaseModel):
    job_id: str
    status: str = Field(description="queued | running | succeeded | failed | cancelled")
    attempts: int | None = Field(default=None, description="Times a runner claimed the job (a runner that died "
                                 "lets its lease lapse; the job is then queued again, up to "
                                 "`automl_max_attempts`).", examples=[1])
    progress: dict[str, Any] = Field(examples=[{"trials": 17, "best": 0.981}])
    request: dict[str, Any] = Field(description="The request as accepted; the dataset as the server reads it.")
    trials: int | None = Field(default=None, description="Configurations tried, when done.")
    winner: dict[str, Any] | None = None
    test: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    exports: dict[str, str] | None = None
    error: str | None = Field(default=None, description="Why a failed job failed, without data values or paths.")
    ray_submission_id: str | None = Field(default=None, description="The Ray job running it, when submitted to a "
                                          "Ray cluster (`ray_jobs_url`).", examples=["nimbus-automl-3f2a9c0d11be"])
    elapsed_s: float | None = None
    timings: dict[str, float | str | None] | None = Field(
        default=None, description="Where the job's time went, seconds from its start: `first_result_s` (the first "
        "scored configuration), `setup_s`, `ray_start_s`, `search_s` (first results and the distributed search), "
        "`refit_s`, `evaluate_s`, `explain_export_s`, `track_s`, `total_s`; `search_skipped` says why there was no "
        "distributed search (a budget too short for it).",
        examples=[{"first_result_s": 1.9, "setup_s": 0.4, "ray_start_s": 4.6, "search_s": 38.7, "refit_s": 1.2,
                   "evaluate_s": 0.4, "explain_export_s": 3.1, "track_s": 0.9, "total_s": 46.2}])
    budget: dict[str, float] | None = Field(default=None, description="The job's budget and its reserves, seconds: "
                                            "after the search, after the refit, after the extras.",
                                            examples=[{"total_s": 60, "search_s": 39.2, "after_search_s": 18,
                                                       "after_refit_s": 12, "after_extras_s": 3,
                                                       "search_rows": 15_000}])
    data: dict[str, Any] | None = Field(default=None, description="What the sampling pass found: rows, the number "
                                        "of classes (not their values or counts), sample sizes, whether the "
                                        "training rows fit the memory budget.",
                                        examples=[{"rows": 40_000_000, "training_rows": 30_000_000, "classes": 3,
                                                   "sample_rows": 620_000, "search_rows": 24_000,
                                                   "fits_memory": False}])
    refit: dict[str, Any] | None = Field(default=None, description="Which model was refit on how many rows; "
                                         "over memory an incremental learner may replace the searched winner.",
                                         examples=[{"model": "sgd_classifier", "searched": "logistic",
                                                    "rows": 28_500_000, "incremental": True,
                                                    "differs_from_winner": True}])


class JobSummary(BaseModel):
    job_id: str = Field(examples=["3f2a9c0d11be"])
    status: str = Field(examples=["running"])
    owner: str | None = Field(default=None, examples=["analyst"])
    dataset: str = Field(examples=["s3://nimbus-data/datasets/churn.csv"])
    target: str = Field(examples=["churned"])
    metric: str | None = Field(default=None, examples=["roc_auc"])
    progress: dict[str, Any] | None = Field(default=None, examples=[{"trials": 17, "best": 0.981}])
    attempts: int | None = None
    model: str | None = Field(default=None, description="The registered model, when done.")
    created_at: Any = None
    claimed_at: Any = None
    finished_at: Any = None
    elapsed_s: float | None = None
    error: str | None = None
    ray_submission_id: str | None = None


class JobPage(BaseModel):
    jobs: list[JobSummary]
    total: int = Field(description="Jobs matching the filter.", examples=[42])
    offset: int = Field(examples=[0])
    limit: int = Field(examples=[20])
    next_offset: int | None = Field(description="The offset of the next page; null on the last.", examples=[20])


class CompareRequest(BaseModel):
    jobs: list[str] = Field(min_length=1, max_length=20, examples=[["3f2a9c0d11be", "77b0c1d2e3f4"]])


class UploadAccepted(BaseModel):
    upload_id: str = Field(description="Server-issued; submit it as the job's `dataset`.",
                           examples=["0f3c9a1e5b7d4c2a8e6f1b3d5a7c9e0f"])
    dataset: str = Field(description="The same upload as an s3:// URI (also accepted as `dataset`).",
                         examples=["s3://nimbus-data/datasets/uploads/0f3c9a1e5b7d4c2a8e6f1b3d5a7c9e0f/churn.csv"])


def _reader(caller: Caller) -> str | None:
    """Whose jobs a caller may read: its own, or (admin) everyone's."""
    return None if caller.allows("admin") else caller.name


def _public(doc: dict[str, Any]) -> dict[str, Any]:
    view = public_job(doc)
    return {"job_id": view["_id"], **{k: view.get(k) for k in JobPublic.model_fields if k != "job_id"},
            "progress": view.get("progress", {})}


def create_automl_app() -> FastAPI:
    upload_limit = get_settings().automl_upload_max_bytes
    app = create_app("Nimbus AutoML", "Submit a dataset; get a searched, tracked, registered model.",
                     max_body_bytes=upload_limit + 64 * 1024, function="automl")
    router = APIRouter(prefix="/automl", tags=["automl"], responses=AUTH_ERRORS)

    @router.post("/jobs", response_model=JobAccepted, status_code=202, responses={
        400: {"description": "The request or the dataset cannot be used; `detail` names the field and the reason "
                             "(never a value of the data or a path). The dataset must be an upload id or "
                             "s3://<data bucket>/datasets/...; the budget at most `automl_max_budget_s`; "
                             "at most `automl_max_columns` columns of at most `automl_max_row_bytes` a row."},
        409: {"description": "The caller already has `automl_max_running_jobs` jobs queued or running, or the "
                             "named model (always automl-...) is registered by another owner's jobs."},
        503: {"description": "A store, or the Ray cluster of `ray_jobs_url`, is unavailable; a job the cluster "
                             "did not take ends failed (submit it again)."}})
    def create_job(body: JobRequest, settings: SettingsDep, caller: AutomlKey) -> dict[str, Any]:
        """Check the dataset and queue the job: a runner process claims it (`nimbus automl worker`, the
        worker of `nimbus local serve`), or, with `ray_jobs_url` set, it is submitted to that Ray cluster;
        answers at once with the job id."""
        doc = submit(settings, body, owner=caller.name)  # the key's name: its quota, its jobs
        dispatch(settings, doc["_id"])
        return {"job_id": doc["_id"], "status": doc["status"], "task": doc["profile"]["task"],
                "metric": doc["metric"]}

    @router.post("/uploads", response_model=UploadAccepted, responses={
        400: {"description": "Not a .csv/.parquet name, or the content is not what the name says (CSV: UTF-8 "
                             "text with a header and rows; Parquet: PAR1 magic and a readable footer); "
                             "nothing is stored."},
        413: {"description": "Over `automl_upload_max_bytes` (20 MiB): put it under "
                             "s3://<data bucket>/datasets/ and give its URI."}})
    async def upload(file: UploadFile, settings: SettingsDep, caller: AutomlKey) -> dict[str, str]:
        """Upload a small CSV or Parquet file under a fresh server-issued id; answers the id (and the
        dataset URI) to submit. Two uploads of the same name never overwrite each other."""
        data = await file.read(settings.automl_upload_max_bytes + 1)
        if len(data) > settings.automl_upload_max_bytes:
            raise HTTPException(413, f"file: over the limit of {settings.automl_upload_max_bytes:,} bytes")
        return store_upload(settings, file.filename, data).as_dict()

    @router.get("/jobs", response_model=JobPage, responses={
        400: {"description": "`status` is not one of queued, running, succeeded, failed, cancelled."}})
    def jobs_page(settings: SettingsDep, caller: AutomlKey,
                  status: str | None = Query(default=None, description=f"Only jobs in this state: {', '.join(STATUSES)}.",
                                             examples=["running"]),
                  limit: int = Query(default=20, ge=1, le=100), offset: int = Query(default=0, ge=0)) -> dict[str, Any]:
        """The caller's jobs (an admin key: everyone's), newest first, a page at a time."""
        return list_jobs(settings, _reader(caller), status, limit=limit, offset=offset)

    @router.post("/jobs/{job_id}/cancel", response_model=JobPublic, responses={
        404: {"description": "No such job (or another owner's)."},
        409: {"description": "The job has already ended (succeeded, failed or cancelled)."}})
    def cancel_job(job_id: str, settings: SettingsDep, caller: AutomlKey) -> dict[str, Any]:
        """Cancel a queued or running job: it is `cancelled` at once and its quota slot freed; its runner
        stops at its next heartbeat without registering a model (on a Ray cluster its Ray job is stopped)."""
        doc = cancel(settings, job_id, _reader(caller), by=caller.name)
        on_cancel(settings, doc)
        return _public(doc)

    @router.get("/jobs/{job_id}", response_model=JobPublic)
    def job(job_id: str, settings: SettingsDep, caller: AutomlKey) -> dict[str, Any]:
        """Status, progress (trials done, best score so far) and, when done, the results: aggregates
        only (rows, number of classes), never the data's values."""
        return _public(get_job(settings, job_id, _reader(caller)))

    @router.get("/jobs/{job_id}/leaderboard")
    def leaderboard(job_id: str, settings: SettingsDep, caller: AutomlKey) -> list[dict[str, Any]]:
        """Every configuration tried, best first."""
        doc = get_job(settings, job_id, _reader(caller))
        if doc["status"] != "succeeded":
            raise InvalidInput(f"job {job_id} is {doc['status']}: no leaderboard yet")
        return doc["leaderboard"]

    @router.post("/compare")
    def compare_jobs(body: CompareRequest, settings: SettingsDep, caller: AutomlKey) -> list[dict[str, Any]]:
        """Finished jobs side by side, best held-out score first."""
        return compare(settings, body.jobs, _reader(caller))

    app.include_router(router)
    return app
