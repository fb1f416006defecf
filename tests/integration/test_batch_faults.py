"""Batch runs that lose their driver or their MongoDB mid-way, on the real engines (Spark local, the S3/SQS emulator,
MongoDB-wire, MLflow): the rerun leaves every record in MongoDB and in Parquet exactly once, and a run that lost
MongoDB says so in one line and commits nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nimbus import governance
from nimbus.batch.examples import write_records
from nimbus.batch.io import FsConfig
from nimbus.batch.job import BatchJob, RunRequest, run_batch
from nimbus.batch.sinks import predicted_ids
from nimbus.config import Settings
from nimbus.local.stack import LocalStack, free_port
from nimbus.stores.documents import Collections, DocumentStore
from nimbus.stores.objects import ObjectStore
from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROWS = 60_000
MODELS = "churn-lr,churn-hgb"


def drop(settings: Settings, name: str, seed: int, rows: int = ROWS) -> str:
    uri = f"s3://{settings.data_bucket}/{settings.drop_prefix}{name}"
    write_records(settings, uri, rows, seed=seed)
    return uri


def start_run(settings: Settings, uri: str) -> subprocess.Popen:
    """`nimbus batch run` as its own process (the Spark driver, its JVM and Python workers in one session)."""
    env = {**os.environ, "COLUMNS": "200", "NIMBUS_MONGO_URL": settings.mongo_url}
    return subprocess.Popen([sys.executable, "-m", "nimbus.cli", "batch", "run", uri, "--models", MODELS], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def staged(settings: Settings) -> int:
    return len(ObjectStore.for_settings(settings).list_keys(settings.artifacts_bucket, "batch/staging/"))


def predictions(settings: Settings) -> int:
    """Predictions MongoDB holds (records: a document holds a block of them)."""
    return len(predicted_ids(settings))


# what "has started writing" means, seen from outside the run
WRITING: dict[str, Callable[[Settings], bool]] = {
    "staging": lambda s: staged(s) > 0,  # a scoring task has written its part under batch/staging/
    "mongodb": lambda s: predictions(s) > 0,  # the MongoDB sink has inserted its first chunk
}


def wait_until_writing(proc: subprocess.Popen, settings: Settings, where: str) -> None:
    deadline = time.monotonic() + 300  # a guard against a hung run, not a measurement
    while not WRITING[where](settings):
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before writing to {where}: " \
                                    f"{proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"the run did not start writing to {where}"
        time.sleep(0.1)


def result_rows(settings: Settings, folder: str) -> pa.Table:
    fs = FsConfig.from_settings(settings).filesystem("s3://x")[0]
    keys = ObjectStore.for_settings(settings).list_keys(settings.artifacts_bucket, folder)
    tables = [pq.read_table(f"{settings.artifacts_bucket}/{k}", filesystem=fs) for k in keys]
    return pa.concat_tables(tables) if tables else pa.table({"record_id": pa.array([], pa.string())})


def check_exactly_once(settings: Settings, key: str, rows: int = ROWS) -> None:
    """MongoDB and the committed Parquet hold each of the input's records once, and nothing is left staged."""
    want = {f"r{i}" for i in range(rows)}
    ids = predicted_ids(settings)
    assert len(ids) == rows and set(ids) == want
    blocks = list(DocumentStore.for_settings(settings).collection(Collections.BATCH_PREDICTIONS).find(
        {}, {"_id": 1, "run_key": 1, "n": 1}))
    assert all(b["run_key"] == key and b["_id"].startswith(f"{key}:part-") for b in blocks)
    assert sum(b["n"] for b in blocks) == rows
    table = result_rows(settings, f"batch/results/{key}/")
    ids = table.column("record_id").to_pylist()
    assert len(ids) == rows and set(ids) == want
    assert staged(settings) == 0


@pytest.mark.timeout(600)  # two batch runs of 60,000 records with Spark, one in a process of its own
@pytest.mark.parametrize("where", ["staging", "mongodb"])
def test_a_driver_killed_mid_run_reruns_to_exactly_one_result_per_record(batch_stack: Settings, where: str) -> None:
    uri = drop(batch_stack, f"killed-{where}.parquet", seed=9)
    proc = start_run(batch_stack, uri)
    wait_until_writing(proc, batch_stack, where)
    os.killpg(proc.pid, signal.SIGKILL)  # by the driver's pid: it, its JVM and its Python workers, at once
    proc.communicate()
    [run] = DocumentStore.for_settings(batch_stack).collection(Collections.BATCH_RUNS).find({})
    assert run["status"] == "running"  # killed, not finished
    if where == "mongodb":
        assert 0 < predictions(batch_stack) < ROWS, "the kill did not land mid-write"

    result = run_batch(batch_stack, RunRequest(uri, MODELS))
    assert result.status == "succeeded" and (result.records, result.scored) == (ROWS, ROWS)
    check_exactly_once(batch_stack, result.run_key)
    [run] = DocumentStore.for_settings(batch_stack).collection(Collections.BATCH_RUNS).find({})
    assert run["attempts"] == 2 and run["outputs"]["parts"]["results"] == 1


def test_a_write_step_retried_after_its_commit_changes_nothing(batch_stack: Settings) -> None:
    """What an Airflow retry of the `write` task does (the task died after the commit, before reporting success)."""
    uri = drop(batch_stack, "retried.parquet", seed=5, rows=3000)
    job = BatchJob(batch_stack, RunRequest(uri, MODELS))
    key, _ = job.prepare()
    job.score(key)
    first = job.write(key)
    again = BatchJob.resume(batch_stack, key).write(key)
    assert again["parts"] == first["parts"] == {"results": 1, "quarantine": 0}  # no bad record: no quarantine part
    assert again["mongodb"] == {"inserted": 0, "duplicates": 3000}
    check_exactly_once(batch_stack, key, rows=3000)


@pytest.fixture
def own_mongodb(batch_stack: Settings, churn_models: dict[str, str],
                tmp_path: Path) -> Iterator[tuple[Settings, LocalStack]]:
    """A MongoDB-wire server of this test's own (on disk, so a restart keeps its data), with the churn champions
    vouched for in its audit trail; the rest of the stack is the session's."""
    settings = batch_stack.model_copy(update={"mongo_url": f"mongodb://127.0.0.1:{free_port()}/"})
    stack = LocalStack(settings.model_copy(update={"home": tmp_path}))  # its pid file and data under tmp_path
    stack.up(["mongodb"], timeout_s=60)
    for name, version in churn_models.items():
        governance.move_alias(settings, name, "champion", version, force=True, reason="test: own MongoDB")
    try:
        yield settings, stack
    finally:
        stack.down(["mongodb"])


def mongodb_pid(stack: LocalStack) -> int:
    [status] = stack.status(["mongodb"])
    assert status.pid is not None
    return status.pid


@pytest.mark.timeout(600)  # two batch runs of 60,000 records with Spark and a MongoDB restart
@pytest.mark.parametrize("where", ["staging", "mongodb"])
def test_mongodb_stopped_mid_run_fails_in_one_line_and_commits_nothing(
        own_mongodb: tuple[Settings, LocalStack], where: str) -> None:
    settings, stack = own_mongodb
    uri = drop(settings, f"mongo-lost-{where}.parquet", seed=11)
    proc = start_run(settings, uri)
    wait_until_writing(proc, settings, where)
    LocalStack._stop_pid(mongodb_pid(stack))  # SIGTERM by pid, then SIGKILL if it lingers
    out, err = proc.communicate(timeout=600)

    assert proc.returncode == 1
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [err.strip().splitlines()[-1]], err[-2000:]  # one line, the last
    [line] = errors
    assert line.startswith(f"error: mongodb at {settings.mongo_url} is unreachable:")
    assert "not marked done" in line

    stack.up(["mongodb"], timeout_s=60)  # the same data folder: the run's document is back
    [run] = DocumentStore.for_settings(settings).collection(Collections.BATCH_RUNS).find({})
    assert run["status"] == "running"  # not done
    assert ObjectStore.for_settings(settings).list_keys(settings.artifacts_bucket, "batch/results/") == []
    assert ObjectStore.for_settings(settings).list_keys(settings.artifacts_bucket, "batch/quarantine/") == []
    assert predictions(settings) < ROWS

    result = run_batch(settings, RunRequest(uri, MODELS))
    assert result.status == "succeeded" and (result.records, result.scored) == (ROWS, ROWS)
    check_exactly_once(settings, result.run_key)
