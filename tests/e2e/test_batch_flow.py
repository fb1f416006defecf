"""Batch predictions as a user meets them: a file dropped in S3 reaches the batch function
through the notification queue; labels arriving later score the run; a Spark cluster
instead of local mode is only a different master URL."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from nimbus.batch.examples import write_records
from nimbus.batch.io import FsConfig
from nimbus.batch.job import RunRequest, run_batch
from nimbus.batch.performance import score_labels
from nimbus.batch.spark import log_path
from nimbus.config import Settings
from nimbus.local.gateway import Gateway, GatewayOptions, serving
from nimbus.local.serverless import load_project
from nimbus.local.stack import free_port
from nimbus.stores.documents import Collections, DocumentStore
from tests.conftest import ROOT
from tests.e2e.test_cli import assert_one_line_error
from tests.e2e.test_cli import run as nimbus

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def runs(settings: Settings) -> list[dict]:
    return list(DocumentStore.for_settings(settings).collection(Collections.BATCH_RUNS).find({}))


def test_a_file_dropped_in_s3_is_scored_by_the_batch_function(batch_stack: Settings) -> None:
    gateway = Gateway(load_project(ROOT), batch_stack, GatewayOptions(schedules=False))
    with serving(gateway.app):
        uri = f"s3://{batch_stack.data_bucket}/{batch_stack.drop_prefix}2026-11-26/orders day 1.csv"
        write_records(batch_stack, uri, 800, seed=21)
        deadline = time.monotonic() + 120
        while not [r for r in runs(batch_stack) if r.get("status") == "succeeded"] and time.monotonic() < deadline:
            time.sleep(0.5)
    [run] = runs(batch_stack)
    assert run["status"] == "succeeded" and run["input"]["uri"] == uri  # key URL-decoded on the way
    assert run["counts"]["scored"] == 800 and run["actor"] == "drop-folder"
    assert ("batch", uri) in gateway.fired


# What the Spark JVM prints at start-up when its log goes to the console.
JVM_NOISE = ("log4j", "Setting default log level", "NativeCodeLoader", "WARN ", "SparkContext", "Using Spark's",
             "incubator")


def test_batch_run_in_a_terminal_shows_nimbus_output_only(batch_stack: Settings) -> None:
    uri = f"s3://{batch_stack.data_bucket}/{batch_stack.drop_prefix}quiet.parquet"
    write_records(batch_stack, uri, 500, bad_rows=2, seed=41)
    log = log_path(batch_stack)
    log.unlink(missing_ok=True)
    done = nimbus(["batch", "run", uri, "--models", "churn-lr", "--sinks", "parquet", "--json"], timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "succeeded"
    noise = [line for line in done.stderr.splitlines() if any(word in line for word in JVM_NOISE)]
    assert noise == [], done.stderr
    assert log.exists()  # the JVM's own log went here instead


def test_labels_that_arrive_later_measure_each_model_version(batch_stack: Settings, churn_models: dict,
                                                            tmp_path: Path) -> None:
    uri = f"s3://{batch_stack.data_bucket}/{batch_stack.drop_prefix}labelled.parquet"
    labels = str(tmp_path / "labels.csv")
    write_records(batch_stack, uri, 3000, seed=31, labels=labels)
    result = run_batch(batch_stack, RunRequest(uri, "churn-lr,churn-hgb"))
    measured = {m["model"]: m for m in score_labels(batch_stack, labels, result.run_key)}
    assert measured["churn-lr"]["version"] == churn_models["churn-lr"] and measured["churn-lr"]["labelled"] == 3000
    for name in ("churn-lr", "churn-hgb"):  # both learned the hidden rule: far better than chance
        assert 0.7 < measured[name]["metrics"]["auc"] <= 1 and 0.6 < measured[name]["metrics"]["accuracy"] <= 1
    from nimbus.batch.performance import performance_history

    [entry] = performance_history(batch_stack, "churn-hgb")
    assert entry["run_key"] == result.run_key and entry["version"] == churn_models["churn-hgb"]

    # one record's predictions by its id, as a user asks for them: those of the committed Parquet results
    folder = f"{batch_stack.artifacts_bucket}/batch/results/{result.run_key}"
    scored = pq.read_table(folder, filesystem=FsConfig.from_settings(batch_stack).filesystem("s3://x")[0])
    k = scored.column("record_id").to_pylist().index("r1234")
    found = nimbus(["batch", "prediction", result.run_key, "r1234", "--json"], timeout=120)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == {"run_key": result.run_key, "record_id": "r1234", "versions": churn_models,
                                        "scores": {m: scored.column(f"score__{m}")[k].as_py() for m in churn_models}}
    assert_one_line_error(nimbus(["batch", "prediction", result.run_key, "nope"], timeout=120),
                          "no prediction for record 'nope'", result.run_key)


@pytest.fixture
def spark_cluster(tmp_path: Path):
    """A real Spark standalone master and worker on loopback, from the pyspark package itself."""
    import pyspark

    home = Path(pyspark.__file__).parent
    port, ui = free_port(), free_port()
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(tmp_path),
           "SPARK_WORKER_DIR": str(tmp_path / "work")}
    spark_class = str(home / "bin" / "spark-class")
    master = subprocess.Popen([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                               "--port", str(port), "--webui-port", str(ui)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    worker = subprocess.Popen([spark_class, "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}",
                               "--host", "127.0.0.1", "--cores", "2", "--memory", "2g", "--webui-port",
                               str(free_port())], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.3)
    time.sleep(3)  # the worker registers with the master
    try:
        yield f"spark://127.0.0.1:{port}"
    finally:
        from pyspark import SparkContext

        if SparkContext._active_spark_context is not None:  # the next test starts its own local[*] again
            SparkContext._active_spark_context.stop()
        for proc in (worker, master):
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)


def test_a_batch_runs_on_a_spark_standalone_cluster_by_setting_the_master_only(
    batch_stack: Settings, spark_cluster: str
) -> None:
    settings = batch_stack.model_copy(update={"spark_master": spark_cluster})
    uri = f"s3://{settings.data_bucket}/{settings.drop_prefix}cluster.parquet"
    write_records(settings, uri, 2000, bad_rows=10, seed=41)
    result = run_batch(settings, RunRequest(uri, "churn-lr,churn-hgb"))
    assert (result.status, result.scored, result.quarantined) == ("succeeded", 1990, 10)
    from nimbus.batch.spark import spark_session

    assert spark_session(settings).sparkContext.master == spark_cluster
