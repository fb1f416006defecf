"""The batch job on a Spark Connect server, as the README runs it: `nimbus batch run s3://...` in a process
of its own with NIMBUS_SPARK_REMOTE=sc://..., against a real Connect server (tests/spark_connect.py).

The same file scored on local[*] and through Connect gives the same counts and the same results (a
checksum of every scored and quarantined record); the server's own REST API shows the work ran there."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pytest

from nimbus.batch.examples import write_records
from nimbus.batch.io import FsConfig, read_parquet
from nimbus.batch.sinks import predicted_ids
from nimbus.config import Settings
from nimbus.stores.objects import ObjectStore, S3Uri
from tests.e2e.test_cli import run
from tests.spark_connect import ConnectServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def folder_checksum(settings: Settings, uri: str) -> tuple[int, str]:
    """(rows, SHA-256) of a run's committed Parquet parts, the run key left out, rows sorted by record id."""
    fs = FsConfig.from_settings(settings)
    parts = ObjectStore.for_settings(settings).list_under(S3Uri.parse(uri.rstrip("/") + "/"))
    table = pa.concat_tables([read_parquet(fs, str(p)) for p in parts])
    rows = sorted(json.dumps(row, sort_keys=True, default=str) for row in table.drop_columns(["run_key"]).to_pylist())
    return len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest()


@pytest.mark.timeout(900)  # a Connect server, the stack, and four CLI runs (two JVMs) on a shared machine
def test_a_batch_run_through_spark_connect_gives_the_local_run_s_output(batch_stack: Settings,
                                                                        spark_connect: ConnectServer) -> None:
    settings = batch_stack
    uris = {mode: f"s3://{settings.data_bucket}/{settings.drop_prefix}{mode}.parquet" for mode in ("local", "connect")}
    for uri in uris.values():  # the same records at two keys: two runs (a run is keyed by its input)
        write_records(settings, uri, 3000, bad_rows=12, seed=51)
    remote = {"NIMBUS_SPARK_REMOTE": spark_connect.url}
    server_jobs = len(spark_connect.jobs())

    done = {}
    for mode, env in (("local", {}), ("connect", remote)):
        scored = run(["batch", "run", uris[mode], "--json"], env, timeout=300)
        assert scored.returncode == 0, scored.stdout + scored.stderr
        done[mode] = json.loads(scored.stdout)
        assert "scored 3,000 of 3,000 records (1/1 tasks)" in scored.stderr, scored.stderr  # Connect too
        if mode == "local":
            assert len(spark_connect.jobs()) == server_jobs  # local[*]: nothing ran on the server
    local, connect = done["local"], done["connect"]
    assert connect["status"] == local["status"] == "succeeded"
    assert connect["run_key"] != local["run_key"]
    for field in ("records", "scored", "quarantined", "failures", "models"):
        assert connect[field] == local[field], field
    assert (connect["records"], connect["scored"], connect["quarantined"]) == (3000, 2988, 12)
    # the scoring and the MongoDB sink ran as Spark jobs of the Connect server (its Python workers)
    jobs = spark_connect.jobs()  # newest first
    ran = jobs[: len(jobs) - server_jobs]
    assert len(ran) >= 2 and all(job["status"] == "SUCCEEDED" for job in ran), ran

    for folder in ("results_uri", "quarantine_uri"):
        assert folder_checksum(settings, connect[folder]) == folder_checksum(settings, local[folder]), folder
    for result in (local, connect):
        assert len(predicted_ids(settings, result["run_key"])) == result["scored"]

    # Airflow's validate step (Spark column expressions) through Connect: the same counts as on local[*]
    counts = {}
    for mode, env in (("local", {}), ("connect", remote)):
        validated = run(["batch", "validate", uris[mode], "--json"], env, timeout=300)
        assert validated.returncode == 0, validated.stdout + validated.stderr
        counts[mode] = json.loads(validated.stdout)
    assert counts["connect"]["records"] == 3000 and counts["connect"]["bad"] == 12
    assert {k: counts["connect"][k] for k in ("records", "bad", "failures")} == \
        {k: counts["local"][k] for k in ("records", "bad", "failures")}
    assert len(spark_connect.jobs()) > server_jobs + len(ran)  # the validation ran there too
