"""The Airflow DAGs, run end to end with `airflow dags test` on SQLite against the test stack, and the batch DAG's
drop-folder trigger run against the S3/SQS emulator."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from nimbus.batch.examples import write_records
from nimbus.batch.sinks import predicted_ids
from nimbus.config import Settings, get_settings
from nimbus.events import ObjectsCreated, parse
from nimbus.stores.documents import Collections, DocumentStore
from nimbus.stores.objects import ObjectStore, QueueStore
from tests.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
AIRFLOW = Path(sys.executable).parent / "airflow"


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if not AIRFLOW.exists():
        pytest.fail("airflow is not installed: make installs the [airflow] extra")
    home = tmp_path_factory.mktemp("airflow")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/a.db",
           "AIRFLOW__CORE__UNIT_TEST_MODE": "False", "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"}
    done = subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return env


def aws_connection(settings: Settings) -> str:
    """Airflow's ``aws_default`` connection for the emulator, as the AIRFLOW_CONN_* variable holds it."""
    return json.dumps({"conn_type": "aws", "login": "test", "password": "test",
                       "extra": {"endpoint_url": settings.aws_endpoint_url, "region_name": settings.aws_region}})


def dags_test(env: dict[str, str], day: str) -> None:
    done = subprocess.run([str(AIRFLOW), "dags", "test", "batch_predictions", day], env=env,
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


def task_states(env: dict[str, str], task_id: str) -> dict[str, list[tuple[int, str]]]:
    """(map index, state) of ``task_id``'s instances, per DAG run, from Airflow's own database."""
    db = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT run_id, map_index, state FROM task_instance WHERE dag_id = 'batch_predictions' "
                            "AND task_id = ? ORDER BY run_id, map_index", (task_id,)).fetchall()
    states: dict[str, list[tuple[int, str]]] = {}
    for run_id, index, state in rows:
        states.setdefault(run_id, []).append((index, state))
    return states


@pytest.mark.timeout(900)  # Airflow's database, then two `dags test` runs with Spark, on a shared machine
def test_the_batch_dag_scores_every_pending_file_once(batch_stack: Settings, airflow_env: dict[str, str]) -> None:
    uris = [f"s3://{batch_stack.data_bucket}/{batch_stack.drop_prefix}{name}" for name in ("a.parquet", "b.csv")]
    write_records(batch_stack, uris[0], 1500, bad_rows=6, seed=12)
    write_records(batch_stack, uris[1], 900, seed=13)
    queue_url = QueueStore(batch_stack, batch_stack.airflow_queue).queue_url
    env = {**airflow_env, **{k: v for k, v in os.environ.items() if k.startswith("NIMBUS_")},
           "NIMBUS_AIRFLOW_QUEUE_URL": queue_url, "AIRFLOW_CONN_AWS_DEFAULT": aws_connection(batch_stack)}

    dags_test(env, "2026-11-26")
    [first] = task_states(env, "score_file.write").values()
    assert first == [(0, "success"), (1, "success")]  # one mapped chain per file, no waiting for the next hour
    documents = DocumentStore.for_settings(batch_stack)
    runs = {r["input"]["uri"]: r for r in documents.collection(Collections.BATCH_RUNS).find({})}
    assert set(runs) == set(uris)
    assert runs[uris[0]]["counts"] == {"records": 1500, "scored": 1494, "quarantined": 6, "duplicates": 0}
    assert runs[uris[1]]["counts"] == {"records": 900, "scored": 900, "quarantined": 0, "duplicates": 0}
    assert all(r["status"] == "succeeded" and r["actor"] == "airflow" and r["attempts"] == 1 for r in runs.values())
    assert len(predicted_ids(batch_stack)) == 1494 + 900

    dags_test(env, "2026-11-27")  # nothing pending now: no chain runs, nothing is scored again
    states = task_states(env, "score_file.write")
    [second] = [v for run_id, v in states.items() if v != first]
    assert all(state == "skipped" for _, state in second), second
    again = {r["input"]["uri"]: r for r in documents.collection(Collections.BATCH_RUNS).find({})}
    assert [r["attempts"] for r in again.values()] == [1, 1]
    assert len(predicted_ids(batch_stack)) == 1494 + 900


def load_dag_module(path: Path):
    spec = importlib.util.spec_from_file_location("batch_predictions_dag", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_dropped_file_fires_the_dags_queue_trigger(clean_stack: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DAG's own asset watcher trigger, run as the triggerer runs it, against the emulator's Airflow queue."""
    queue_url = QueueStore(clean_stack, clean_stack.airflow_queue).queue_url
    monkeypatch.setenv("NIMBUS_AIRFLOW_QUEUE_URL", queue_url)
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection(clean_stack))
    get_settings.cache_clear()
    try:
        module = load_dag_module(ROOT / "dags" / "batch_predictions.py")
    finally:
        get_settings.cache_clear()
    [watcher] = module.DROPS.watchers
    key = f"{clean_stack.drop_prefix}2026/12/day one+final.csv"  # the notification carries it URL-encoded
    ObjectStore.for_settings(clean_stack).put_bytes(clean_stack.data_bucket, key, b"record_id\nr1\n")

    async def first_event():
        async for event in watcher.trigger.run():
            return event.payload
        return None

    payload = asyncio.run(asyncio.wait_for(first_event(), timeout=120))
    assert payload["status"] == "success"
    events = [parse(json.loads(m["Body"])) for m in payload["message_batch"]]
    keys = [o.key for e in events if isinstance(e, ObjectsCreated) for o in e.objects]
    assert keys == [key]
    # delivered to Airflow's queue without taking the gateway's message: the gateway still gets its own
    gateway = [json.loads(m["Body"]) for m in QueueStore(clean_stack).receive(wait_s=2)]
    assert any(isinstance(e := parse(b), ObjectsCreated) and e.objects[0].key == key for b in gateway)
