"""AutoML jobs as records: the request (checked before a job exists) and the job's document in
MongoDB (status, progress, leaderboard, winner); the runner (``runner.py``) fills it in."""

from __future__ import annotations

import os
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field, field_validator
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from nimbus import tracing
from nimbus.automl.algorithms import choose
from nimbus.automl.data import peek
from nimbus.automl.inputs import resolve
from nimbus.automl.metrics import check_metric, sign
from nimbus.automl.profile import profile
from nimbus.config import Settings
from nimbus.errors import Conflict, InvalidInput, NimbusError, NotFound, StoreUnavailable
from nimbus.stores.documents import INDEXES, Collections, DocumentStore

MODEL_PREFIX = "automl-"
OWNER_TAG = "nimbus.automl.owner"  # on a registered model: the owner whose jobs may add versions to it


class JobRequest(BaseModel):
    dataset: str = Field(description="Over HTTP: an upload id (from POST /automl/uploads) or "
                                     "s3://<data bucket>/datasets/... (a CSV or Parquet file, or a folder of parts). "
                                     "The CLI may also name a local path.",
                         examples=["s3://nimbus-data/datasets/churn.csv", "0f3c9a1e5b7d4c2a8e6f1b3d5a7c9e0f"],
                         max_length=1024)
    target: str = Field(min_length=1, max_length=256, examples=["churned"])
    task: str | None = Field(default=None, pattern="^(classification|regression)$",
                             description="Inferred from the target when absent.")
    metric: str | None = Field(default=None, max_length=64, examples=["roc_auc"])
    budget_s: float = Field(default=60, ge=10, le=6 * 3600,
                            description="Wall-clock budget of the whole job; over HTTP at most "
                                        "Settings.automl_max_budget_s (default 3600).")
    max_trials: int | None = Field(default=None, ge=1, le=10_000)
    include: list[str] | None = Field(default=None, max_length=50, examples=[["hist_gb", "logistic"]])
    exclude: list[str] | None = Field(default=None, max_length=50)
    gpu: bool | None = Field(default=None, description="Use a GPU when present (default: when present).")
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.\-]{1,64}$", examples=["churn", "automl-churn"],
                             description=f"Registered model name, always under {MODEL_PREFIX!r}: a name without "
                                         "the prefix gets it (churn -> automl-churn). Default automl-<job id>.")

    @field_validator("name")
    @classmethod
    def _automl_name(cls, name: str | None) -> str | None:
        """Only ever a model of AutoML's own: never a version under another model (churn-lr...)."""
        if name is None:
            return None
        name = name if name.startswith(MODEL_PREFIX) else MODEL_PREFIX + name
        if name == MODEL_PREFIX:
            raise ValueError(f"give a name after {MODEL_PREFIX!r}")
        return name

    def model_name(self, job_id: str) -> str:
        return self.name or f"{MODEL_PREFIX}{job_id}"


def jobs(settings: Settings) -> Collection:
    collection = DocumentStore.for_settings(settings).collection(Collections.AUTOML_JOBS)
    _ensure_indexes(collection, (settings.mongo_url, settings.mongo_db))
    return collection


_INDEXED: set[tuple[str, str]] = set()


def _ensure_indexes(collection: Collection, where: tuple[str, str]) -> None:
    """The jobs' declared indexes, once per process and database: the quota's unique (owner, slot)
    index must exist before the first submit, wherever the database was set up."""
    if where not in _INDEXED:
        for keys, options in INDEXES[Collections.AUTOML_JOBS]:
            collection.create_index(keys, **options)
        _INDEXED.add(where)


def submit(settings: Settings, request: JobRequest, *, owner: str, trusted_paths: bool = False) -> dict[str, Any]:
    """Check the request against the data's first rows (bounded: the dataset may be any size),
    then record a queued job held by ``owner``; bad input, or an owner at its quota, makes no job.

    ``trusted_paths``: the caller runs as the user who owns the files (the CLI): any local path or
    bucket it can read. Otherwise (HTTP) the dataset is confined (:mod:`nimbus.automl.inputs`) and the
    budget capped at ``automl_max_budget_s``."""
    if not trusted_paths and request.budget_s > settings.automl_max_budget_s:
        raise InvalidInput(f"budget_s: {request.budget_s:g} s is over the limit of {settings.automl_max_budget_s:g} s")
    location = resolve(settings, request.dataset, trusted=trusted_paths)
    _check_quota(settings, owner)  # early, before reading data; the insert below is the atomic check
    if request.name is not None:
        check_model_owner(settings, request.name, owner)
    frame, rows, whole = peek(settings, location)
    # Past the first rows the class checks wait for the job's full pass (a sorted file may hold
    # its other classes further on); a dataset read whole is checked completely here.
    prof = profile(frame, request.target, request.task, rows=rows, partial=not whole)  # type: ignore[arg-type]
    metric = check_metric(prof.task, request.metric, prof.classes)
    choose(prof, request.include, request.exclude)
    doc = {"_id": uuid.uuid4().hex[:12], "status": "queued",
           "request": {**request.model_dump(), "dataset": location}, "metric": metric,
           "profile": prof.as_dict(), "created_at": datetime.now(UTC), "owner": owner,
           "trusted_paths": trusted_paths, "progress": {"trials": 0, "best": None}}
    if trace := tracing.inject({}):  # the submitter's W3C context: the runner's job span continues its trace
        doc["trace"] = dict(trace)
    return _insert_holding_a_slot(settings, doc, owner)


def _check_quota(settings: Settings, owner: str) -> None:
    if jobs(settings).count_documents({"owner": owner, "slot": {"$exists": True}}) >= settings.automl_max_running_jobs:
        raise _over_quota(settings, owner)


def _over_quota(settings: Settings, owner: str) -> Conflict:
    limit = settings.automl_max_running_jobs
    return Conflict(f"{owner!r} already has {limit} AutoML job{'s' if limit != 1 else ''} queued or running "
                    f"(the limit); submit again when one has ended")


def _insert_holding_a_slot(settings: Settings, doc: dict[str, Any], owner: str) -> dict[str, Any]:
    """Insert the job holding one of the owner's ``automl_max_running_jobs`` slots. The unique
    (owner, slot) index makes check and insert one step: of two submits racing for the last slot,
    one insert fails and that job is not made. :func:`finish` frees the slot."""
    for slot in range(settings.automl_max_running_jobs):
        try:
            jobs(settings).insert_one({**doc, "slot": slot})
        except DuplicateKeyError:
            continue  # that slot is held (a job-id clash, once in 2**48, refuses too: safe)
        return {**doc, "slot": slot}
    raise _over_quota(settings, owner)


def check_model_owner(settings: Settings, name: str, owner: str) -> None:
    """A named model is either new or registered by this owner's jobs (the first one tags it):
    a job never adds a version to another owner's model."""
    from nimbus.stores.registry import Registry

    try:
        holder = Registry.for_settings(settings).model_tag(name, OWNER_TAG)
    except NotFound:
        return
    if holder != owner:
        raise Conflict(f"name: the model {name!r} is registered by another owner's jobs; choose another name")


def claim_model(settings: Settings, name: str, owner: str) -> None:
    """Tag a model a job just registered with its owner, unless an earlier job did."""
    from nimbus.stores.registry import Registry

    registry = Registry.for_settings(settings)
    if registry.model_tag(name, OWNER_TAG) is None:
        registry.set_model_tag(name, OWNER_TAG, owner)


def finish(settings: Settings, job_id: str, fields: dict[str, Any], runner: str | None = None) -> bool:
    """A job's last update (it succeeded or failed): its fields set, its lease and its owner's slot freed,
    at once. With ``runner``, only while that runner still holds the job running (a runner whose lease
    lapsed, or whose job was cancelled, writes nothing): True when the job was updated."""
    query: dict[str, Any] = {"_id": job_id}
    if runner is not None:
        query.update(runner=runner, status="running")
    result = jobs(settings).update_one(query, {"$set": fields, "$unset": {"slot": "", "lease_until": ""}})
    return result.matched_count == 1


def public_error(exc: BaseException) -> str:
    """What a job's failure may tell whoever follows the job: our own messages (written not to hold
    data values or paths), else the error's kind only; the full text stays in ``error_detail``."""
    if isinstance(exc, NimbusError) and not isinstance(exc, StoreUnavailable):
        return str(exc)
    if isinstance(exc, StoreUnavailable):
        return f"a backend ({exc.store}) was unavailable; submit the job again"
    return f"the job failed ({type(exc).__name__}); the operator finds the details in the job's record"


def public_job(doc: dict[str, Any]) -> dict[str, Any]:
    """The job as its followers see it: aggregates, not the data's values (no per-class counts:
    the number of classes instead) nor local paths of the CLI's jobs."""
    view = dict(doc)
    if isinstance(view.get("data"), dict):
        data = dict(view["data"])
        counts = data.pop("class_counts", None)
        data["classes"] = None if counts is None else len(counts)
        view["data"] = data
    if isinstance(view.get("request"), dict):
        view["request"] = {**view["request"], "dataset": public_dataset(view["request"].get("dataset", ""))}
    return view


def public_dataset(dataset: str) -> str:
    return dataset if dataset.startswith("s3://") else "(a local file)"


def get_job(settings: Settings, job_id: str, owner: str | None = None) -> dict[str, Any]:
    """The job's document; with ``owner``, only that owner's (another's job is as unknown as a missing one)."""
    query: dict[str, Any] = {"_id": job_id} if owner is None else {"_id": job_id, "owner": owner}
    doc = jobs(settings).find_one(query)
    if doc is None:
        raise NotFound(f"no AutoML job {job_id!r}")
    return doc


def update(settings: Settings, job_id: str, fields: dict[str, Any], runner: str | None = None) -> None:
    """Set fields of a job; with ``runner``, only while that runner holds it running."""
    query: dict[str, Any] = {"_id": job_id} if runner is None else {"_id": job_id, "runner": runner, "status": "running"}
    jobs(settings).update_one(query, {"$set": fields})


# ---- the lifecycle: queued -> running -> succeeded | failed | cancelled ------------------------------
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ENDED = frozenset({"succeeded", "failed", "cancelled"})


def new_runner_id() -> str:
    """A runner's name in the jobs it holds: host, process and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


def claim(settings: Settings, runner: str, job_id: str | None = None, *,
          now: datetime | None = None) -> dict[str, Any] | None:
    """The oldest queued job (or ``job_id``, when it is queued), now running under ``runner``'s lease;
    None when there is none. One atomic update: of two runners claiming one job, one gets it.

    Jobs whose lease lapsed are requeued first (:func:`requeue_lapsed`), so a runner that died is replaced."""
    now = _now(now)
    requeue_lapsed(settings, now=now)
    query: dict[str, Any] = {"status": "queued"} if job_id is None else {"_id": job_id, "status": "queued"}
    return jobs(settings).find_one_and_update(
        query, {"$set": {"status": "running", "runner": runner, "claimed_at": now, "heartbeat_at": now,
                         "lease_until": now + timedelta(seconds=settings.automl_lease_s)},
                "$inc": {"attempts": 1}},
        sort=[("created_at", ASCENDING)], return_document=ReturnDocument.AFTER)


def renew(settings: Settings, job_id: str, runner: str, *, now: datetime | None = None) -> bool:
    """The heartbeat: extend ``runner``'s lease on a running job; False when it no longer holds it
    (the job was cancelled, or its lease lapsed and it was requeued or failed)."""
    now = _now(now)
    result = jobs(settings).update_one(
        {"_id": job_id, "runner": runner, "status": "running"},
        {"$set": {"heartbeat_at": now, "lease_until": now + timedelta(seconds=settings.automl_lease_s)}})
    return result.matched_count == 1


def requeue_lapsed(settings: Settings, *, now: datetime | None = None) -> list[str]:
    """Running jobs whose runner stopped renewing: queued again for another runner, or, after
    ``automl_max_attempts`` claims, failed with the reason (its slot freed). The ids changed.

    Each update is conditioned on the lease seen, so two sweeps at once change a job once."""
    now = _now(now)
    collection = jobs(settings)
    changed = []
    for doc in collection.find({"status": "running", "lease_until": {"$lt": now}},
                               {"_id": 1, "lease_until": 1, "attempts": 1, "runner": 1}):
        seen = {"_id": doc["_id"], "status": "running", "lease_until": doc["lease_until"]}
        attempts = int(doc.get("attempts", 1))
        lost = {"runner": doc.get("runner"), "lease_until": doc["lease_until"], "noticed_at": now}
        if attempts >= settings.automl_max_attempts:
            update = {"$set": {"status": "failed", "finished_at": now,
                               "error": f"its runner stopped renewing the lease {attempts} time"
                                        f"{'s' if attempts != 1 else ''} (the limit); submit the job again"},
                      "$unset": {"slot": "", "lease_until": "", "runner": ""}, "$push": {"lost_runners": lost}}
        else:
            update = {"$set": {"status": "queued", "requeued_at": now, "progress": {"trials": 0, "best": None}},
                      "$unset": {"lease_until": "", "runner": ""}, "$push": {"lost_runners": lost}}
        if collection.update_one(seen, update).matched_count:
            changed.append(doc["_id"])
    return changed


def cancel(settings: Settings, job_id: str, owner: str | None = None, *, by: str = "its owner") -> dict[str, Any]:
    """Mark a queued or running job cancelled (its slot freed at once); its runner sees that at its next
    heartbeat and stops without writing results. Conflict when the job has already ended."""
    doc = get_job(settings, job_id, owner)
    if doc["status"] in ENDED:
        raise Conflict(f"job {job_id} has already ended ({doc['status']}); nothing to cancel")
    now = datetime.now(UTC)
    ended = jobs(settings).find_one_and_update(
        {"_id": job_id, "status": {"$in": ["queued", "running"]}},
        {"$set": {"status": "cancelled", "cancelled_at": now, "finished_at": now, "error": f"cancelled by {by}"},
         "$unset": {"slot": "", "lease_until": ""}},
        return_document=ReturnDocument.AFTER)
    if ended is None:  # it ended between the read and the update
        raise Conflict(f"job {job_id} has already ended ({get_job(settings, job_id)['status']}); nothing to cancel")
    return ended


SUMMARY_FIELDS = ("status", "owner", "created_at", "claimed_at", "finished_at", "attempts", "progress", "metric",
                  "ray_submission_id", "error", "elapsed_s")


def list_jobs(settings: Settings, owner: str | None = None, status: str | None = None, *,
              limit: int = 20, offset: int = 0) -> dict[str, Any]:
    """A page of jobs, newest first: ``owner``'s only when given, of one ``status`` when given."""
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status: {status!r} is not one of {', '.join(STATUSES)}")
    if not 1 <= limit <= 100:
        raise InvalidInput("limit: between 1 and 100")
    if offset < 0:
        raise InvalidInput("offset: 0 or more")
    query: dict[str, Any] = {}
    if owner is not None:
        query["owner"] = owner
    if status is not None:
        query["status"] = status
    collection = jobs(settings)
    found = collection.find(query).sort([("created_at", DESCENDING), ("_id", ASCENDING)]).skip(offset).limit(limit)
    rows = []
    for doc in found:
        view = public_job(doc)
        rows.append({"job_id": view["_id"], "dataset": view["request"]["dataset"],
                     "target": view["request"]["target"], "model": (view.get("model") or {}).get("name"),
                     **{k: view.get(k) for k in SUMMARY_FIELDS}})
    total = collection.count_documents(query)
    return {"jobs": rows, "total": total, "offset": offset, "limit": limit,
            "next_offset": offset + len(rows) if offset + len(rows) < total else None}


def compare(settings: Settings, job_ids: list[str], owner: str | None = None) -> list[dict[str, Any]]:
    """Finished jobs side by side: winner, held-out metric with its interval, trials, time."""
    if not job_ids:
        raise InvalidInput("give at least one job id to compare")
    rows = []
    for job_id in job_ids:
        job = get_job(settings, job_id, owner)
        if job["status"] != "succeeded":
            raise InvalidInput(f"job {job_id} is {job['status']}; only finished jobs can be compared")
        rows.append({"job": job_id, "dataset": public_dataset(job["request"]["dataset"]), "target": job["request"]["target"],
                     "winner": job["winner"]["algorithm"], "test": job["test"], "trials": job["trials"],
                     "elapsed_s": job.get("elapsed_s"), "model": job["model"]})
    metrics = {r["test"]["metric"] for r in rows}
    lower = sign(next(iter(metrics))) < 0 if len(metrics) == 1 else False
    rows.sort(key=lambda r: r["test"]["value"], reverse=not lower)
    return rows
