"""The ``automl`` function's app: submit a dataset, follow the job, read its leaderboard, compare jobs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, UploadFile
from pydantic import BaseModel, Field

from nimbus.api.auth import AUTH_ERRORS, AutomlKey
from nimbus.api.common import SettingsDep, create_app
from nimbus.automl.jobs import JobRequest, compare, get_job, submit
from nimbus.automl.runner import run_in_background
from nimbus.errors import InvalidInput
from nimbus.stores.objects import ObjectStore

UPLOAD_LIMIT = 20 * 1024 * 1024


class JobAccepted(BaseModel):
    job_id: str = Field(examples=["3f2a9c0d11be"])
    status: str = Field(examples=["queued"])
    task: str = Field(examples=["classification"])
    metric: str = Field(examples=["roc_auc"])


class JobPublic(BaseModel):
    job_id: str
    status: str = Field(description="queued | running | succeeded | failed")
    progress: dict[str, Any] = Field(examples=[{"trials": 17, "best": 0.981}])
    request: dict[str, Any]
    trials: int | None = Field(default=None, description="Configurations tried, when done.")
    winner: dict[str, Any] | None = None
    test: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    exports: dict[str, str] | None = None
    error: str | None = None
    elapsed_s: float | None = None
    timings: dict[str, float] | None = None
    budget: dict[str, float] | None = Field(default=None, description="The job's budget and its reserves, seconds: "
                                            "after the search, after the refit, after the extras.",
                                            examples=[{"total_s": 60, "search_s": 39.2, "after_search_s": 18,
                                                       "after_refit_s": 12, "after_extras_s": 3,
                                                       "search_rows": 15_000}])
    data: dict[str, Any] | None = Field(default=None, description="What the sampling pass found: rows, class counts, "
                                        "sample sizes, whether the training rows fit the memory budget.",
                                        examples=[{"rows": 40_000_000, "training_rows": 30_000_000,
                                                   "sample_rows": 620_000, "search_rows": 24_000,
                                                   "fits_memory": False}])
    refit: dict[str, Any] | None = Field(default=None, description="Which model was refit on how many rows; "
                                         "over memory an incremental learner may replace the searched winner.",
                                         examples=[{"model": "sgd_classifier", "searched": "logistic",
                                                    "rows": 28_500_000, "incremental": True,
                                                    "differs_from_winner": True}])


class CompareRequest(BaseModel):
    jobs: list[str] = Field(min_length=1, max_length=20, examples=[["3f2a9c0d11be", "77b0c1d2e3f4"]])


def create_automl_app() -> FastAPI:
    app = create_app("Nimbus AutoML", "Submit a dataset; get a searched, tracked, registered model.",
                     max_body_bytes=UPLOAD_LIMIT + 64 * 1024, function="automl")
    router = APIRouter(prefix="/automl", tags=["automl"], responses=AUTH_ERRORS)

    @router.post("/jobs", response_model=JobAccepted, status_code=202,
                 responses={400: {"description": "The dataset cannot be used: the reason is in `detail`."}})
    def create_job(body: JobRequest, settings: SettingsDep, caller: AutomlKey) -> dict[str, Any]:
        """Check the dataset, queue the job and start it; answers at once with the job id."""
        doc = submit(settings, body)
        run_in_background(settings, doc["_id"])
        return {"job_id": doc["_id"], "status": doc["status"], "task": doc["profile"]["task"],
                "metric": doc["metric"]}

    @router.post("/uploads", responses={413: {"description": "Over 20 MiB: put it in S3 and give its URI."}})
    async def upload(file: UploadFile, settings: SettingsDep, caller: AutomlKey) -> dict[str, str]:
        """Upload a small CSV or Parquet file; answers the dataset URI to submit."""
        name = (file.filename or "").rsplit("/", 1)[-1]
        if not name.endswith((".csv", ".parquet")):
            raise InvalidInput("upload a .csv or .parquet file")
        data = await file.read()
        key = f"datasets/uploads/{name}"
        ObjectStore.for_settings(settings).put_bytes(settings.data_bucket, key, data)
        return {"dataset": f"s3://{settings.data_bucket}/{key}"}

    @router.get("/jobs/{job_id}", response_model=JobPublic)
    def job(job_id: str, settings: SettingsDep, caller: AutomlKey) -> dict[str, Any]:
        """Status, progress (trials done, best score so far) and, when done, the results."""
        doc = get_job(settings, job_id)
        return {"job_id": doc["_id"], **{k: doc.get(k) for k in JobPublic.model_fields if k != "job_id"},
                "progress": doc.get("progress", {})}

    @router.get("/jobs/{job_id}/leaderboard")
    def leaderboard(job_id: str, settings: SettingsDep, caller: AutomlKey) -> list[dict[str, Any]]:
        """Every configuration tried, best first."""
        doc = get_job(settings, job_id)
        if doc["status"] != "succeeded":
            raise InvalidInput(f"job {job_id} is {doc['status']}: no leaderboard yet")
        return doc["leaderboard"]

    @router.post("/compare")
    def compare_jobs(body: CompareRequest, settings: SettingsDep, caller: AutomlKey) -> list[dict[str, Any]]:
        """Finished jobs side by side, best held-out score first."""
        return compare(settings, body.jobs)

    app.include_router(router)
    return app
