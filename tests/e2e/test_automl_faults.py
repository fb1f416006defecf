"""AutoML jobs survive their runners (issue 12), against real engines: a local Ray per runner process, the
session's MongoDB-wire server, S3 emulator and MLflow. Runners are `nimbus automl worker` processes, as a
user or a container platform starts them; one is killed with SIGKILL by its pid in the middle of a search.
The gateway (`nimbus local serve`) keeps answering while its worker child runs a job and after.

Waits are bounded polls on what the stores say (the deadline only fails a stuck run); no test asserts
how long anything took. The figures are printed (pytest -s shows them) for the issue's note."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification

from nimbus.automl.jobs import ENDED, JobRequest, get_job, submit
from nimbus.config import Settings
from nimbus.local.stack import free_port
from nimbus.stores.objects import ObjectStore
from nimbus.stores.registry import Registry

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]  # whole jobs, twice, on a busy machine
ROOT = Path(__file__).resolve().parents[2]
KEY = {"X-API-Key": "nimbus-local-key"}


def wait_for(check: Callable[[], Any], what: str, deadline_s: float = 400, every_s: float = 0.5) -> Any:
    """Poll until ``check()`` is truthy; only a really stuck run reaches the deadline."""
    deadline = time.monotonic() + deadline_s
    while not (value := check()):
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(every_s)
    return value


def dataset(settings: Settings, rows: int = 1500) -> str:
    x, y = make_classification(rows, 6, n_informative=4, random_state=3)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(6)]).assign(target=np.where(y == 1, "yes", "no"))
    ObjectStore.for_settings(settings).put_bytes(settings.data_bucket, "datasets/faults.csv",
                                                 frame.to_csv(index=False).encode())
    return f"s3://{settings.data_bucket}/datasets/faults.csv"


def queue(settings: Settings, n: int, budget_s: float, **extra: Any) -> list[str]:
    uri = dataset(settings)
    roomy = settings.model_copy(update={"automl_max_running_jobs": max(2, n)})
    return [submit(roomy, JobRequest(dataset=uri, target="target", budget_s=budget_s, **extra), owner="local")["_id"]
            for _ in range(n)]


def worker(tmp_path: Path, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    log = (tmp_path / f"{name}.log").open("w")
    return subprocess.Popen([sys.executable, "-m", "nimbus.cli", "automl", "worker", *args], cwd=ROOT,
                            env={**os.environ, "COLUMNS": "200", **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def end(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def versions(settings: Settings, job_id: str) -> list[str]:
    return [v.version for v in Registry.for_settings(settings).versions(f"automl-{job_id}")]


def test_a_runner_killed_mid_search_loses_its_lease_and_the_job_succeeds_once(clean_stack: Settings,
                                                                             tmp_path: Path) -> None:
    lease = {"NIMBUS_AUTOML_LEASE_S": "3"}  # a heartbeat every second; a dead runner's lease lapses in 3 s
    # max_trials: the rerun ends when its search has tried 6 configurations rather than at the 60 s budget
    [job_id] = queue(clean_stack, 1, budget_s=60, max_trials=6)
    first = worker(tmp_path, "first", env=lease)
    try:
        # Mid-search: Ray is up and Tune has been handed the search (its share of the budget recorded),
        # whether or not a trial has reported yet on a busy machine.
        wait_for(lambda: "search_s" in (get_job(clean_stack, job_id).get("budget") or {}), "the first runner's search")
        held = get_job(clean_stack, job_id)
        assert held["status"] == "running" and held["attempts"] == 1
        os.kill(first.pid, signal.SIGKILL)  # mid-search: no chance to clean up
        first.wait(30)
        killed_at = datetime.now(UTC)
    finally:
        end(first)
    assert get_job(clean_stack, job_id)["status"] == "running"  # nobody knows yet: the lease still runs
    # No heartbeat renews it now: once it has lapsed, the next runner requeues the job, claims it and
    # runs it to the end.
    lapses = held["lease_until"].replace(tzinfo=UTC)
    wait_for(lambda: datetime.now(UTC) > get_job(clean_stack, job_id)["lease_until"].replace(tzinfo=UTC),
             "the dead runner's lease to lapse", deadline_s=60)
    assert get_job(clean_stack, job_id)["lease_until"].replace(tzinfo=UTC) >= lapses  # renewed while alive only
    second = worker(tmp_path, "second", "--once", env=lease)
    try:
        assert second.wait(400) == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        end(second)
    doc = get_job(clean_stack, job_id)
    assert doc["status"] == "succeeded", doc.get("error_detail")
    assert doc["attempts"] == 2 and len(doc["lost_runners"]) == 1
    assert doc["lost_runners"][0]["runner"] == held["runner"] != doc["runner"]
    assert versions(clean_stack, job_id) == [doc["model"]["version"]]  # one registered version
    noticed = doc["lost_runners"][0]["noticed_at"].replace(tzinfo=UTC)
    print(f"\nSIGKILL mid-search at trial {held['progress']['trials']}; requeued {(noticed - killed_at).total_seconds():.1f} s "
          f"after the kill (3 s lease), attempt 2 succeeded with {doc['trials']} trials; "
          f"registered versions: {versions(clean_stack, job_id)}")


def test_two_runners_on_one_queue_run_each_job_exactly_once(clean_stack: Settings, tmp_path: Path) -> None:
    ids = queue(clean_stack, 3, budget_s=10, max_trials=4)  # short: what counts is who ran each, and how often
    runners = [worker(tmp_path, f"runner{n}", "--once") for n in (1, 2)]
    try:
        for n, runner in enumerate(runners, 1):
            assert runner.wait(600) == 0, (tmp_path / f"runner{n}.log").read_text()[-3000:]
    finally:
        for runner in runners:
            end(runner)
    docs = [get_job(clean_stack, job_id) for job_id in ids]
    for doc in docs:
        # exactly once: one claim, one runner, ended; a succeeded job registered one version
        assert doc["status"] in ENDED and doc["attempts"] == 1 and "lost_runners" not in doc, doc
        assert len(versions(clean_stack, doc["_id"])) == (1 if doc["status"] == "succeeded" else 0)
    logs = "".join((tmp_path / f"runner{n}.log").read_text() for n in (1, 2))
    for job_id in ids:
        assert logs.count(f"running job {job_id}") == 1  # one runner started it, once
    by_runner = {doc["runner"] for doc in docs}
    print(f"\n3 jobs, 2 runner processes: statuses {[d['status'] for d in docs]}, "
          f"claims per job {[d['attempts'] for d in docs]}, {len(by_runner)} runner(s) used")


@pytest.fixture
def gateway(live_recommender: dict, tmp_path: Path) -> Iterator[dict]:
    """`nimbus local serve` in its own process (with its AutoML worker child), on the session's stores."""
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "nimbus.cli", "local", "serve", "--port", str(port), "--no-schedules", "--no-watch"],
        cwd=ROOT, env={**os.environ, "NIMBUS_PROJECT_ROOT": str(ROOT), "NIMBUS_REQUEST_TIMEOUT_S": "2.0"},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def up() -> bool:
        assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        try:
            return client.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(up, "nimbus local serve to answer /health", deadline_s=120)
        yield {**live_recommender, "client": client, "process": process, "log": tmp_path / "serve.log"}
    finally:
        client.close()
        end(process)
        log.close()


def test_the_gateway_answers_every_function_through_an_automl_job_and_after(gateway: dict) -> None:
    settings: Settings = gateway["settings"]
    client: httpx.Client = gateway["client"]
    process: subprocess.Popen = gateway["process"]
    users = [str(u) for u in gateway["features"].user_ids[:20]]
    accepted = client.post("/automl/jobs", headers=KEY, json={"dataset": dataset(settings), "target": "target",
                                                              "budget_s": 45, "max_trials": 12})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    answers: list[int] = []
    failures: list[str] = []

    def poll_once(n: int) -> None:
        assert process.poll() is None, gateway["log"].read_text()[-3000:]  # the gateway process stays alive
        for path in ("/health", f"/recommendations/{users[n % len(users)]}"):
            try:
                answers.append(client.get(path).status_code)
            except httpx.TransportError as exc:  # before: connection failures while the job ran
                failures.append(f"{path}: {type(exc).__name__}")

    n = 0
    while get_job(settings, job_id)["status"] not in ENDED:  # through the job (its runner: the worker child)
        poll_once(n)
        n += 1
        time.sleep(0.5)
    during = len(answers)
    after = time.monotonic()
    while time.monotonic() - after < 90:  # and for 90 s after it: a Ray that ended must not end the gateway
        poll_once(n)
        n += 1
        time.sleep(1.0)
    doc = get_job(settings, job_id)
    assert failures == [] and set(answers) == {200}, (failures, sorted(set(answers)))
    # The job ran its search on a Ray of its own, in the worker child, never in the gateway's process.
    # (Whether a 45 s search on a loaded 2-core machine finds a trial in time is issue 13's, not this test's.)
    assert doc["attempts"] == 1 and doc["runner"].split(":")[1] != str(process.pid)
    assert "setup_s" in (doc.get("timings") or {}) or "no trial finished" in (doc.get("error_detail") or ""), doc
    print(f"\njob {job_id} {doc['status']} ({doc.get('trials', 0)} trials) in the worker child; the gateway answered "
          f"{during} requests during the job and {len(answers) - during} in the 90 s after, all 200, pid "
          f"{process.pid} alive")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie that no init reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_the_gateways_worker_child_ends_with_the_gateway(clean_stack: Settings, tmp_path: Path,
                                                         how: signal.Signals) -> None:
    """A worker left behind would go on claiming the queue's jobs: it goes when `local serve` goes, however."""
    import re

    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "nimbus.cli", "local", "serve", "--port", str(port), "--no-schedules", "--no-watch"],
            cwd=ROOT, env={**os.environ, "NIMBUS_PROJECT_ROOT": str(ROOT), "COLUMNS": "300"}, stdout=sink,
            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        child = int(wait_for(lambda: re.search(r"AutoML worker: pid (\d+)", log.read_text()), "the worker child",
                             deadline_s=120).group(1))
        assert _alive(child)
        process.send_signal(how)
        process.wait(60)
        wait_for(lambda: not _alive(child), f"the worker child to end after {how.name} to the gateway", deadline_s=60)
    finally:
        end(process)
    if how == signal.SIGTERM:
        assert f"AutoML worker (pid {child}) stopped" in log.read_text()  # stopped by the gateway itself
