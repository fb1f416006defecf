"""AutoML scaled out, on a real two-node Ray cluster started with `ray start` on this machine
(``tests/ray_cluster.py``: one cluster for the session, with token authentication and the Jobs API):

* a job reached by setting the Ray address only (NIMBUS_RAY_ADDRESS): its trials land on the cluster;
* a job submitted over HTTP with the Jobs API's address (NIMBUS_RAY_JOBS_URL): the API answers at
  once and the job runs as a Ray job on the cluster (``nimbus.automl.cluster``); cancel stops it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sklearn.datasets import make_classification

from nimbus.config import Settings, get_settings
from nimbus.stores.documents import Collections, DocumentStore
from nimbus.stores.objects import ObjectStore
from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KEY = {"X-API-Key": "nimbus-local-key"}  # the local stack's key (admin: every scope)
ENDED = ("SUCCEEDED", "FAILED", "STOPPED")


def test_a_job_runs_on_a_two_node_cluster_by_setting_the_address_only(
        clean_stack: Settings, ray_cluster: dict, tmp_path: Path) -> None:
    # Trials that take a second or more, so two run at once: on a tiny dataset a trial ends in
    # milliseconds and Tune may hand every next configuration to the one actor already warm.
    x, y = make_classification(20_000, 20, n_informative=10, random_state=0)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(20)]).assign(
        target=np.where(y == 1, "benign", "malignant"))
    dataset = tmp_path / "cancer.csv"
    frame.to_csv(dataset, index=False)
    env = {**os.environ, **ray_cluster["env"], "NIMBUS_RAY_ADDRESS": ray_cluster["address"], "COLUMNS": "250"}
    done = subprocess.run([sys.executable, "-m", "nimbus.cli", "automl", "run", str(dataset), "--target", "target",
                           "--budget", "60"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    job_id = re.search(r"job ([0-9a-f]{12}):", done.stderr).group(1)  # the submission, on stderr

    job = DocumentStore.for_settings(clean_stack).collection(Collections.AUTOML_JOBS).find_one({"_id": job_id})
    assert job["status"] == "succeeded", job.get("error")
    # The first results are scored in the runner itself ("runner"); the search's trials ran on this
    # cluster's nodes (not a fresh local Ray). Whether Tune spreads them over both nodes is Ray's
    # scheduling, not a promise: a loaded fresh clone once put every trial on one warm node.
    nodes = {row["node"] for row in job["leaderboard"]} - {"runner"}
    assert nodes and nodes <= ray_cluster["nodes"], (nodes, ray_cluster["nodes"], job["timings"],
                                                     done.stdout[-2000:])

    import mlflow

    mlflow.set_tracking_uri(clean_stack.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{job['model']['name']}/{job['model']['version']}")
    predictions = model.predict(frame.drop(columns=["target"]).head(20))
    assert set(np.asarray(predictions).tolist()) <= {"benign", "malignant"}


# ---- through the Jobs API ----------------------------------------------------------------------
@pytest.fixture
def jobs_client(clean_stack: Settings, ray_cluster: dict, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The automl function's app with the cluster's Jobs API address and token in its settings."""
    from nimbus.api.automl import create_automl_app

    monkeypatch.setenv("NIMBUS_RAY_JOBS_URL", ray_cluster["jobs_url"])
    monkeypatch.setenv("NIMBUS_RAY_JOBS_TOKEN", ray_cluster["token"])
    get_settings.cache_clear()
    try:
        with TestClient(create_automl_app(), headers=KEY) as client:
            yield client
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def ray_jobs(ray_cluster: dict):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(ray_cluster["jobs_url"], headers={"Authorization": f"Bearer {ray_cluster['token']}"})


def small_dataset(settings: Settings, rows: int = 3000) -> str:
    x, y = make_classification(rows, 8, n_informative=5, random_state=1)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(8)]).assign(target=np.where(y == 1, "yes", "no"))
    key = "datasets/cluster.csv"
    ObjectStore.for_settings(settings).put_bytes(settings.data_bucket, key, frame.to_csv(index=False).encode())
    return f"s3://{settings.data_bucket}/{key}"


def wait_for(check, what: str, deadline_s: float = 300):
    """Poll until ``check()`` is truthy; only a really stuck run fails the deadline."""
    deadline = time.monotonic() + deadline_s
    while not (value := check()):
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.5)
    return value


def test_an_api_job_runs_as_a_ray_job_on_the_cluster(jobs_client: TestClient, clean_stack: Settings,
                                                      ray_cluster: dict) -> None:
    # 40 s: the search's share must cover starting trial actors on both nodes of a loaded machine
    # (with 15 s no trial had reported when the search's time was up).
    submitted = time.monotonic()
    accepted = jobs_client.post("/automl/jobs", json={"dataset": small_dataset(clean_stack), "target": "target",
                                                      "budget_s": 40, "max_trials": 6})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    sid = jobs_client.get(f"/automl/jobs/{job_id}").json()["ray_submission_id"]
    assert sid == f"nimbus-automl-{job_id}"
    client = ray_jobs(ray_cluster)
    assert sid in {job.submission_id for job in client.list_jobs()}
    status = wait_for(lambda: (s := client.get_job_status(sid).value) in ENDED and s, f"Ray job {sid}")
    elapsed = time.monotonic() - submitted
    logs = client.get_job_logs(sid)
    assert status == "SUCCEEDED", logs[-3000:]

    job = jobs_client.get(f"/automl/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job.get("error")
    assert job["model"]["name"] == f"automl-{job_id}" and job["model"]["version"] == "1"
    leaderboard = jobs_client.get(f"/automl/jobs/{job_id}/leaderboard").json()
    nodes = {row["node"] for row in leaderboard} - {"runner"}  # the first results: in the Ray job's entrypoint
    assert nodes and nodes <= ray_cluster["nodes"], (nodes, ray_cluster["nodes"])
    print(f"\nRay job {sid}: {status}; {job['trials']} trials on {len(nodes)} of {len(ray_cluster['nodes'])} "
          f"nodes; submit -> {status} {elapsed:.1f} s")

    # A second submit of the same job is the same Ray job, not a second run.
    from nimbus.automl.cluster import submit

    assert submit(get_settings(), job_id) == sid
    assert [j.submission_id for j in client.list_jobs()].count(sid) == 1


def test_an_unreachable_cluster_fails_the_submit_with_a_503_and_frees_the_slot(
        clean_stack: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from nimbus.api.automl import create_automl_app
    from nimbus.local.stack import free_port

    monkeypatch.setenv("NIMBUS_RAY_JOBS_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    get_settings.cache_clear()
    try:
        with TestClient(create_automl_app(), headers=KEY) as client:
            answer = client.post("/automl/jobs", json={"dataset": small_dataset(clean_stack, 300),
                                                       "target": "target", "budget_s": 15})
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert answer.status_code == 503, answer.text
    assert "ray jobs" in answer.json()["detail"] and "127.0.0.1" not in answer.json()["detail"]
    job = DocumentStore.for_settings(clean_stack).collection(Collections.AUTOML_JOBS).find_one({})
    assert job["status"] == "failed" and "slot" not in job and "ray_submission_id" not in job


def test_cancelling_a_running_cluster_job_stops_its_ray_job(jobs_client: TestClient, clean_stack: Settings,
                                                            ray_cluster: dict) -> None:
    accepted = jobs_client.post("/automl/jobs", json={"dataset": small_dataset(clean_stack), "target": "target",
                                                      "budget_s": 300})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    sid = f"nimbus-automl-{job_id}"
    client = ray_jobs(ray_cluster)
    # Cancel in the middle of the search: the runner on the cluster has claimed the job and trials run.
    wait_for(lambda: jobs_client.get(f"/automl/jobs/{job_id}").json()["progress"].get("trials", 0) >= 1,
             "the first trial on the cluster")
    assert client.get_job_status(sid).value == "RUNNING"
    cancelled = time.monotonic()
    answer = jobs_client.post(f"/automl/jobs/{job_id}/cancel")
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled", answer.text
    status = wait_for(lambda: (s := client.get_job_status(sid).value) in ENDED and s, f"Ray job {sid} to end")
    assert status == "STOPPED", client.get_job_logs(sid)[-3000:]
    job = jobs_client.get(f"/automl/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["model"] is None  # stopped mid-search: nothing registered
    print(f"\nRay job {sid}: {status} {time.monotonic() - cancelled:.1f} s after cancel, at "
          f"{job['progress']['trials']} trials; job document: {job['status']}")
    assert jobs_client.post(f"/automl/jobs/{job_id}/cancel").status_code == 409  # already ended


def test_a_cluster_job_whose_runner_died_is_requeued_and_resubmitted_by_the_sweep(
        jobs_client: TestClient, clean_stack: Settings, ray_cluster: dict) -> None:
    """The automl function's schedule on AWS: a job whose Ray driver died (its lease lapsed) goes back to the
    queue and to the cluster as a new Ray job of its own (attempt 2), which runs it to the end."""
    from datetime import UTC, datetime, timedelta

    from nimbus.automl.cluster import submission_id, sweep
    from nimbus.automl.jobs import JobRequest, claim, get_job, submit, update

    settings = get_settings()  # the jobs_client's: the cluster's Jobs API and token
    job = submit(settings, JobRequest(dataset=small_dataset(clean_stack), target="target", budget_s=40), owner="local")
    job_id = job["_id"]
    # As if attempt 1 had been submitted and its driver had died long ago: a claim whose lease lapsed.
    update(settings, job_id, {"ray_submission_id": submission_id(job_id)})
    claim(settings, "raylet-that-died", job_id, now=datetime.now(UTC) - timedelta(minutes=10))
    swept = sweep(settings)
    assert swept == {"requeued": [job_id], "resubmitted": [f"nimbus-automl-{job_id}-r1"]}
    assert sweep(settings) == {"requeued": [], "resubmitted": []}  # once: the recorded submission is attempt 2's
    client = ray_jobs(ray_cluster)
    sid = f"nimbus-automl-{job_id}-r1"
    status = wait_for(lambda: (s := client.get_job_status(sid).value) in ENDED and s, f"Ray job {sid} to end")
    doc = get_job(settings, job_id)
    assert status == "SUCCEEDED", client.get_job_logs(sid)[-3000:]
    assert doc["status"] == "succeeded" and doc["attempts"] == 2 and doc["ray_submission_id"] == sid
    print(f"\nrequeued by the sweep and resubmitted as {sid}: {status}, job {doc['status']} on attempt "
          f"{doc['attempts']}")
