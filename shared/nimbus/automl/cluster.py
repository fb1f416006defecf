"""AutoML jobs on a Ray cluster, through its Job Submission API (``ray.job_submission``).

With ``ray_jobs_url`` set, the API only submits and reads: :func:`submit` hands the queued job to
the cluster as a Ray job whose entrypoint is the Nimbus runner (``python -m nimbus.cli automl
worker --job ID``), which claims that job, searches on the cluster it runs on and exits. No
function has to stay alive for the search (a Lambda answers in milliseconds); :func:`stop` ends
the Ray job when the job is cancelled. Without the setting, :func:`dispatch` leaves the job queued
for a runner process (``nimbus automl worker``; ``nimbus local serve`` starts one): never a thread of
the serving process.

The Ray job's submission id is derived from the job id (and, once a lapsed lease requeued it, the
attempt), so a retried submit is idempotent: Ray refuses a second job under that id and the job counts
as submitted. :func:`sweep` (the automl function's schedule) requeues jobs whose runner died and
submits them again. The runner gets the store
settings it needs (MongoDB, S3, MLflow) as the Ray job's environment; they are never logged here.
"""

from __future__ import annotations

import logging
import shlex
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from nimbus import tracing
from nimbus.automl.jobs import get_job, jobs, requeue_lapsed, update
from nimbus.config import Settings
from nimbus.errors import NimbusError, StoreUnavailable

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

log = logging.getLogger("nimbus.automl.cluster")
SUBMISSION_PREFIX = "nimbus-automl-"
STORE = "ray jobs"
# What the runner on the cluster reads: where the job's record, data, artifacts and models live,
# and the limits its data checks apply. An unset one is passed empty (None there too, not the local default).
RUNNER_SETTINGS = ("mongo_url", "mongo_db", "aws_endpoint_url", "aws_region", "data_bucket", "artifacts_bucket",
                   "mlflow_tracking_uri", "mlflow_registry_uri", "store_timeout_s", "automl_memory_mb",
                   "automl_max_columns", "automl_max_row_bytes")


def submission_id(job_id: str, attempt: int = 0) -> str:
    """The Ray job's id for an AutoML job: one Ray job per AutoML job and attempt, whoever submits it
    (attempt n > 0 after the n-th lapsed lease)."""
    return f"{SUBMISSION_PREFIX}{job_id}" if attempt == 0 else f"{SUBMISSION_PREFIX}{job_id}-r{attempt}"


def entrypoint(job_id: str) -> str:
    """The shell command the cluster runs: the Nimbus runner, for exactly this job."""
    return f"python -m nimbus.cli automl worker --job {shlex.quote(job_id)}"


def runner_env(settings: Settings) -> dict[str, str]:
    """The Ray job's environment: the store settings of this process, and Ray = the cluster it runs on."""
    env = {f"NIMBUS_{name.upper()}": "" if getattr(settings, name) is None else str(getattr(settings, name))
           for name in RUNNER_SETTINGS}
    env["NIMBUS_RAY_ADDRESS"] = "auto"  # a Ray job's driver finds its cluster in RAY_ADDRESS
    return env


def client(settings: Settings) -> JobSubmissionClient:
    """A client of the cluster's Jobs API (it checks the connection and Ray's version)."""
    if not settings.ray_jobs_url:
        raise StoreUnavailable(STORE, "(none)", "NIMBUS_RAY_JOBS_URL is not set")
    # The SDK logs each request's JSON (the runner's environment) at debug level: never here.
    logging.getLogger("ray.dashboard.modules.dashboard_sdk").setLevel(logging.INFO)
    from ray.job_submission import JobSubmissionClient

    token = _token(settings)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(settings.ray_jobs_url, headers=headers)
    except Exception as exc:  # connection refused, 401/403, a version mismatch: the cluster is not usable
        raise _unavailable(settings, exc) from exc


def _token(settings: Settings) -> str | None:
    """The cluster's token: from ``ray_jobs_token_source`` (AWS SSM / Secrets Manager) or the setting."""
    if settings.ray_jobs_token_source:
        from nimbus.stores.secrets import read_secret

        return read_secret(settings, settings.ray_jobs_token_source).strip()
    return settings.ray_jobs_token.get_secret_value() if settings.ray_jobs_token is not None else None


def _unavailable(settings: Settings, exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(STORE, str(settings.ray_jobs_url), f"{type(exc).__name__}: {str(exc)[:300]}",
                            "the job was not started; submit it again")


def submit(settings: Settings, job_id: str, attempt: int = 0) -> str:
    """Hand a queued job to the cluster; its Ray submission id, recorded on the job as ``ray_submission_id``.

    Idempotent: a job already submitted (by this call before, or by another process) is not submitted
    again. When the cluster cannot take it, the job ends ``failed`` (its slot freed) and
    StoreUnavailable says so."""
    sid = submission_id(job_id, attempt)
    jobs_api = _client_or_fail(settings, job_id)
    try:
        jobs_api.submit_job(entrypoint=entrypoint(job_id), submission_id=sid,
                            runtime_env={"env_vars": tracing.job_env(runner_env(settings))},
                            metadata={"nimbus_job": job_id}, entrypoint_num_cpus=0)
    except Exception as exc:  # Ray refuses a second job under one id: then it is submitted
        if not _exists(jobs_api, sid):
            _fail(settings, job_id, exc)
            raise _unavailable(settings, exc) from exc
        log.info("AutoML job %s was already submitted to the Ray cluster as %s", job_id, sid)
    else:
        log.info("AutoML job %s submitted to the Ray cluster as %s", job_id, sid)
    update(settings, job_id, {"ray_submission_id": sid})
    return sid


def _client_or_fail(settings: Settings, job_id: str) -> JobSubmissionClient:
    try:
        return client(settings)
    except NimbusError as exc:  # unreachable, or its token missing: no runner will ever claim the job
        _fail(settings, job_id, exc)
        raise


def _fail(settings: Settings, job_id: str, exc: BaseException) -> None:
    """A job the cluster did not take ends here (no runner will ever claim it); only while it is still
    queued: a retried submit of a job that runs or ran leaves it alone."""
    fields = {"status": "failed", "error": "the Ray cluster did not take the job; submit it again",
              "error_detail": f"{type(exc).__name__}: {str(exc)[:300]}", "finished_at": datetime.now(UTC)}
    jobs(settings).update_one({"_id": job_id, "status": "queued"}, {"$set": fields, "$unset": {"slot": ""}})


def _exists(jobs_api: JobSubmissionClient, sid: str) -> bool:
    try:
        jobs_api.get_job_info(sid)
    except Exception:  # noqa: BLE001 - "does not exist", or the cluster went away meanwhile
        return False
    return True


def stop(settings: Settings, sid: str) -> bool:
    """Ask the cluster to stop a Ray job (SIGTERM, then SIGKILL); True when it was still running."""
    try:
        return bool(client(settings).stop_job(sid))
    except StoreUnavailable:
        raise
    except Exception as exc:  # the job does not exist there, or the request failed
        raise _unavailable(settings, exc) from exc


def dispatch(settings: Settings, job_id: str) -> str | None:
    """Start a queued job where it runs: on the Ray cluster when ``ray_jobs_url`` is set (its
    submission id); otherwise it stays queued for a runner process to claim (None)."""
    if settings.ray_jobs_url:
        return submit(settings, job_id)
    return None


def sweep(settings: Settings) -> dict[str, list[str]]:
    """Requeue the jobs whose runner stopped renewing its lease (or fail them after their last attempt)
    and, on a Ray cluster, submit the requeued ones again under their attempt's submission id."""
    requeued = requeue_lapsed(settings)
    resubmitted = []
    if settings.ray_jobs_url:
        for doc in jobs(settings).find({"status": "queued", "ray_submission_id": {"$exists": True}}):
            attempt = len(doc.get("lost_runners", []))
            if attempt and doc["ray_submission_id"] != submission_id(doc["_id"], attempt):
                resubmitted.append(submit(settings, doc["_id"], attempt))
    if requeued or resubmitted:
        log.info("AutoML sweep: requeued %s, resubmitted %s", requeued, resubmitted)
    return {"requeued": requeued, "resubmitted": resubmitted}


def on_cancel(settings: Settings, job: dict[str, Any] | str) -> bool:
    """After a job was marked cancelled: stop its Ray job, when it has one (True when one was stopped)."""
    doc = get_job(settings, job) if isinstance(job, str) else job
    sid = doc.get("ray_submission_id")
    if not sid or not settings.ray_jobs_url:
        return False
    try:
        stopped = stop(settings, sid)
    except StoreUnavailable as exc:  # the job is cancelled all the same: its runner stops at its next heartbeat
        log.warning("AutoML job %s cancelled; its Ray job %s could not be stopped now: %s", doc["_id"], sid, exc)
        return False
    log.info("AutoML job %s cancelled: Ray job %s %s", doc["_id"], sid, "stopped" if stopped else "had already ended")
    return stopped
