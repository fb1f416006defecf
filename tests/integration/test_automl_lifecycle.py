"""The AutoML job lifecycle (issue 12) against the real MongoDB-wire server, the S3 emulator and MLflow:
claims are exclusive, leases lapse and requeue (then fail), a runner that lost its job writes nothing,
cancel, the paged list (API and CLI), and one registered version per job. No Ray here: the lifecycle
is the store's; the runs themselves are in tests/e2e/test_automl_faults.py. Time is injected (``now``)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from nimbus.api.automl import create_automl_app
from nimbus.automl import jobs as lifecycle
from nimbus.automl.jobs import JobRequest, claim, finish, get_job, renew, requeue_lapsed, submit
from nimbus.config import Settings, get_settings
from nimbus.errors import Conflict, InvalidInput
from nimbus.stores.objects import ObjectStore

pytestmark = pytest.mark.integration

KEY = {"X-API-Key": "nimbus-local-key"}  # the local key: its name is "local"


@pytest.fixture
def settings(clean_stack: Settings) -> Settings:
    """Room for many jobs of one owner; a 30 s lease, two attempts."""
    return clean_stack.model_copy(update={"automl_max_running_jobs": 20, "automl_lease_s": 30,
                                          "automl_max_attempts": 2})


@pytest.fixture
def dataset(settings: Settings) -> str:
    frame = pd.DataFrame({"a": range(40), "b": [x * 0.5 for x in range(40)], "y": [0, 1] * 20})
    ObjectStore.for_settings(settings).put_bytes(settings.data_bucket, "datasets/life.csv",
                                                 frame.to_csv(index=False).encode())
    return f"s3://{settings.data_bucket}/datasets/life.csv"


def queue(settings: Settings, dataset: str, n: int, owner: str = "local") -> list[str]:
    return [submit(settings, JobRequest(dataset=dataset, target="y", budget_s=10), owner=owner)["_id"]
            for _ in range(n)]


@pytest.fixture
def http(settings: Settings) -> Iterator[TestClient]:
    app = create_automl_app()
    app.dependency_overrides[get_settings] = lambda: settings
    with TestClient(app, headers=KEY) as client:
        yield client


def test_two_runners_claiming_one_queue_get_each_job_exactly_once(settings: Settings, dataset: str) -> None:
    ids = queue(settings, dataset, 12)
    got: dict[str, list[str]] = {"r1": [], "r2": []}
    start = threading.Barrier(2)

    def runner(name: str) -> None:
        start.wait()
        while (job := claim(settings, name)) is not None:
            got[name].append(job["_id"])

    threads = [threading.Thread(target=runner, args=(name,)) for name in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = got["r1"] + got["r2"]
    assert sorted(claimed) == sorted(ids) and len(set(claimed)) == len(ids)  # every job once, none twice
    for name, mine in got.items():
        for job_id in mine:
            doc = get_job(settings, job_id)
            assert doc["status"] == "running" and doc["runner"] == name and doc["attempts"] == 1
    print(f"12 jobs, 2 runners: {len(got['r1'])} + {len(got['r2'])} claims, no job claimed twice")


def test_a_lapsed_lease_requeues_the_job_then_fails_it_after_the_last_attempt(settings: Settings,
                                                                               dataset: str) -> None:
    [job_id] = queue(settings, dataset, 1)
    t0 = datetime.now(UTC)
    first = claim(settings, "dead-runner", job_id, now=t0)
    assert first is not None and first["attempts"] == 1
    assert renew(settings, job_id, "dead-runner", now=t0 + timedelta(seconds=10))  # the heartbeat holds it
    assert requeue_lapsed(settings, now=t0 + timedelta(seconds=39)) == []  # renewed at +10: held until +40
    assert requeue_lapsed(settings, now=t0 + timedelta(seconds=41)) == [job_id]
    doc = get_job(settings, job_id)
    assert doc["status"] == "queued" and "runner" not in doc and "lease_until" not in doc and "slot" in doc
    assert doc["lost_runners"][0]["runner"] == "dead-runner"
    # the old runner, if it was only slow, finds out at its next heartbeat and writes nothing more
    assert not renew(settings, job_id, "dead-runner", now=t0 + timedelta(seconds=42))
    assert not finish(settings, job_id, {"status": "succeeded"}, runner="dead-runner")
    assert get_job(settings, job_id)["status"] == "queued"
    # the second (last) attempt lapses too: failed with the reason, the owner's slot freed
    t1 = t0 + timedelta(seconds=60)
    assert claim(settings, "second-runner", now=t1)["attempts"] == 2
    assert requeue_lapsed(settings, now=t1 + timedelta(seconds=31)) == [job_id]
    doc = get_job(settings, job_id)
    assert doc["status"] == "failed" and "slot" not in doc and "2 times" in doc["error"]
    assert [lost["runner"] for lost in doc["lost_runners"]] == ["dead-runner", "second-runner"]
    assert claim(settings, "third-runner", now=t1 + timedelta(seconds=32)) is None


def test_only_the_runner_holding_a_job_finishes_it(settings: Settings, dataset: str) -> None:
    [job_id] = queue(settings, dataset, 1)
    claim(settings, "owner-runner", job_id)
    assert not finish(settings, job_id, {"status": "succeeded"}, runner="someone-else")
    lifecycle.update(settings, job_id, {"progress": {"trials": 99}}, runner="someone-else")
    assert get_job(settings, job_id)["progress"]["trials"] == 0
    assert finish(settings, job_id, {"status": "succeeded"}, runner="owner-runner")
    doc = get_job(settings, job_id)
    assert doc["status"] == "succeeded" and "slot" not in doc and "lease_until" not in doc


def test_cancel_a_queued_and_a_running_job_over_http(http: TestClient, settings: Settings, dataset: str) -> None:
    queued_id, running_id = queue(settings, dataset, 2)
    claim(settings, "busy-runner", running_id)
    for job_id in (queued_id, running_id):
        answer = http.post(f"/automl/jobs/{job_id}/cancel")
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "cancelled" and answer.json()["error"] == "cancelled by local"
        assert "slot" not in get_job(settings, job_id)
    assert not renew(settings, running_id, "busy-runner")  # its runner stops at the next heartbeat
    assert claim(settings, "another-runner") is None  # a cancelled job is never claimed
    again = http.post(f"/automl/jobs/{queued_id}/cancel")
    assert again.status_code == 409 and "already ended (cancelled)" in again.json()["detail"]
    assert http.post("/automl/jobs/000000000000/cancel").status_code == 404


def test_another_owners_job_can_be_neither_listed_nor_cancelled(settings: Settings, dataset: str) -> None:
    from nimbus.apikeys import ApiKey

    key, stored = ApiKey.create("analyst", ["automl"])  # not admin: sees its own jobs only
    [theirs] = queue(settings, dataset, 1, owner="someone-else")
    [mine] = queue(settings, dataset, 1, owner="analyst")
    app = create_automl_app()
    app.dependency_overrides[get_settings] = lambda: settings.model_copy(update={"api_keys": [stored]})
    with TestClient(app, headers={"X-API-Key": key}) as analyst:
        assert analyst.post(f"/automl/jobs/{theirs}/cancel").status_code == 404
        assert get_job(settings, theirs)["status"] == "queued"
        assert [j["job_id"] for j in analyst.get("/automl/jobs").json()["jobs"]] == [mine]


def test_the_list_is_paged_newest_first_and_filtered_by_status(http: TestClient, settings: Settings,
                                                               dataset: str) -> None:
    ids = queue(settings, dataset, 5)
    claim(settings, "r", ids[0])
    page = http.get("/automl/jobs", params={"limit": 2}).json()
    assert page["total"] == 5 and page["next_offset"] == 2
    assert [j["job_id"] for j in page["jobs"]] == ids[::-1][:2]
    last = http.get("/automl/jobs", params={"limit": 2, "offset": 4}).json()
    assert [j["job_id"] for j in last["jobs"]] == [ids[0]] and last["next_offset"] is None
    running = http.get("/automl/jobs", params={"status": "running"}).json()
    assert [j["job_id"] for j in running["jobs"]] == [ids[0]] and running["jobs"][0]["attempts"] == 1
    assert running["jobs"][0]["dataset"] == dataset
    bad = http.get("/automl/jobs", params={"status": "done"})
    assert bad.status_code == 400 and "status" in bad.json()["detail"]
    assert http.get("/automl/jobs", params={"limit": 0}).status_code == 422
    with pytest.raises(InvalidInput, match="status"):
        lifecycle.list_jobs(settings, status="done")


def test_cli_list_show_and_cancel_as_separate_processes(settings: Settings, dataset: str) -> None:
    ids = queue(settings, dataset, 2)

    def nimbus(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "nimbus.cli", "automl", *args], capture_output=True,
                              text=True, timeout=120)

    listed = nimbus("list", "--json")
    assert listed.returncode == 0, listed.stderr
    page = json.loads(listed.stdout)
    assert page["total"] == 2 and {j["job_id"] for j in page["jobs"]} == set(ids)
    table = nimbus("list", "--status", "queued")
    assert table.returncode == 0 and ids[0] in table.stdout
    shown = nimbus("show", ids[0], "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["status"] == "queued"
    summary = nimbus("show", ids[0])  # a table of its fields, not JSON
    assert summary.returncode == 0 and "queued" in summary.stdout and '"status"' not in summary.stdout
    cancelled = nimbus("cancel", ids[0])
    assert cancelled.returncode == 0 and f"job {ids[0]} cancelled" in cancelled.stdout
    assert get_job(settings, ids[0])["status"] == "cancelled"
    twice = nimbus("cancel", ids[0])
    assert twice.returncode == 1 and twice.stderr.startswith("error: job") and "Traceback" not in twice.stderr
    unknown = nimbus("show", "nosuchjob")
    assert unknown.returncode == 1 and "no AutoML job" in unknown.stderr and "Traceback" not in unknown.stderr
    bad = nimbus("list", "--status", "done")
    assert bad.returncode == 1 and "status" in bad.stderr


def test_a_worker_refuses_a_job_it_cannot_claim(settings: Settings, dataset: str) -> None:
    [job_id] = queue(settings, dataset, 1)
    claim(settings, "the-runner", job_id)
    answer = subprocess.run([sys.executable, "-m", "nimbus.cli", "automl", "worker", "--job", job_id],
                            capture_output=True, text=True, timeout=120)
    assert answer.returncode == 1 and "is not queued" in answer.stderr and "Traceback" not in answer.stderr
    assert get_job(settings, job_id)["runner"] == "the-runner"


def test_a_job_registers_its_winner_once_even_when_run_again(settings: Settings) -> None:
    from sklearn.linear_model import LogisticRegression

    from nimbus.automl.tracking import register_winner
    from nimbus.stores.registry import Registry

    rng = np.random.default_rng(0)
    x = pd.DataFrame({"a": rng.normal(size=60), "b": rng.normal(size=60)})
    y = (x["a"] > 0).astype(int)
    model = LogisticRegression().fit(x, y)
    winner = {"params": {"algorithm": "logistic", "C": 1.0}}
    test = {"metric": "roc_auc", "value": 0.9, "ci95": [0.8, 1.0]}
    first = register_winner(settings, "job-once", "automl-once", winner, model, x, test, {})
    second = register_winner(settings, "job-once", "automl-once", winner, model, x, test, {})  # a rerun
    assert first == second
    assert [v.version for v in Registry.for_settings(settings).versions("automl-once")] == [first[0]]
    other = register_winner(settings, "job-other", "automl-once", winner, model, x, test, {})
    assert other[0] != first[0]  # another job's winner is a new version


def test_a_job_cancelled_while_queued_is_refused_by_a_runner(settings: Settings, dataset: str) -> None:
    from nimbus.automl.runner import run_job

    [job_id] = queue(settings, dataset, 1)
    lifecycle.cancel(settings, job_id, by="test")
    with pytest.raises(Conflict, match="not queued"):
        run_job(settings, job_id)
    assert get_job(settings, job_id)["status"] == "cancelled"


def test_the_automl_functions_schedule_requeues_jobs_whose_runner_died(clean_stack: Settings, dataset: str) -> None:
    """The sweep as AWS runs it: an EventBridge schedule event to the automl function's handler."""
    import json

    from nimbus.local.invoke import Invoker
    from nimbus.local.serverless import load_project

    [job_id] = queue(clean_stack, dataset, 1)
    claim(clean_stack, "vanished-runner", job_id, now=datetime.now(UTC) - timedelta(minutes=5))  # long lapsed
    event = json.loads((clean_stack.project_root / "tests/data/events/eventbridge_scheduled.json").read_text())
    event["resources"] = ["arn:aws:events:us-east-1:123456789012:rule/nimbus-automl-sweep"]
    invoker = Invoker(load_project(clean_stack.project_root))
    try:
        result = invoker.invoke("automl", event)
    finally:
        invoker.close()
    assert result.ok, result.payload
    assert result.payload == {"rule": "nimbus-automl-sweep", "requeued": [job_id], "resubmitted": []}
    doc = get_job(clean_stack, job_id)
    assert doc["status"] == "queued" and doc["lost_runners"][0]["runner"] == "vanished-runner"
