"""Batch predictions end to end on real Spark (local), the S3 emulator, MongoDB-wire and MLflow."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from nimbus import audit
from nimbus.batch.examples import make_records, write_records
from nimbus.batch.io import FsConfig
from nimbus.batch.job import BatchFailed, BatchJob, RunRequest, run_batch
from nimbus.batch.sinks import BLOCK, predicted_ids, prediction
from nimbus.config import Settings
from nimbus.stores.documents import Collections, DocumentStore
from nimbus.stores.objects import ObjectStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def drop(settings: Settings, name: str, rows: int, bad_rows: int = 0, seed: int = 0) -> str:
    uri = f"s3://{settings.data_bucket}/{settings.drop_prefix}{name}"
    write_records(settings, uri, rows, bad_rows, seed)
    return uri


def results_table(settings: Settings, prefix: str) -> pa.Table:
    fs = FsConfig.from_settings(settings)
    keys = ObjectStore.for_settings(settings).list_keys(settings.artifacts_bucket, prefix + "/")
    tables = [pq.read_table(f"{settings.artifacts_bucket}/{k}", filesystem=fs.filesystem("s3://x")[0]) for k in keys]
    return pa.concat_tables(tables) if tables else pa.table({})


def predictions(settings: Settings) -> int:
    """Predictions MongoDB holds (records, not documents: a document holds a block of them)."""
    return len(predicted_ids(settings))


def test_a_dropped_file_is_scored_once_with_two_models(batch_stack: Settings, churn_models: dict) -> None:
    uri = drop(batch_stack, "day1.parquet", 3000)
    result = run_batch(batch_stack, RunRequest(uri, "churn-lr@champion,churn-hgb@champion"))
    assert result.status == "succeeded"
    assert (result.records, result.scored, result.quarantined) == (3000, 3000, 0)
    assert result.models == churn_models
    table = results_table(batch_stack, f"batch/results/{result.run_key}")
    assert table.num_rows == 3000 and len(set(table.column("record_id").to_pylist())) == 3000
    assert pc.min(table.column("score__churn-lr")).as_py() >= 0 and pc.max(table.column("score__churn-hgb")).as_py() <= 1
    assert set(table.column("version__churn-hgb").to_pylist()) == {churn_models["churn-hgb"]}
    by_id = {rid: k for k, rid in enumerate(table.column("record_id").to_pylist())}
    for rid in ("r7", "r2999", "r1500"):  # one record's predictions by its id: those of the Parquet results
        doc = prediction(batch_stack, result.run_key, rid)
        assert doc["record_id"] == rid and doc["versions"] == churn_models
        assert doc["scores"] == {m: table.column(f"score__{m}")[by_id[rid]].as_py() for m in churn_models}
    assert prediction(batch_stack, result.run_key, "r3000") is None
    assert predictions(batch_stack) == 3000
    documents = DocumentStore.for_settings(batch_stack)
    parts = documents.collection(Collections.BATCH_RUNS).find_one({"_id": result.run_key})["parts"]["scored"]
    blocks = documents.collection(Collections.BATCH_PREDICTIONS).count_documents({"run_key": result.run_key})
    assert blocks <= 3000 // BLOCK + len(parts)  # one document per block of records, not one per record

    again = run_batch(batch_stack, RunRequest(uri, "churn-lr@champion,churn-hgb@champion"))
    assert again.status == "skipped" and again.run_key == result.run_key
    assert predictions(batch_stack) == 3000

    report = json.loads(ObjectStore.for_settings(batch_stack).get_bytes(
        batch_stack.artifacts_bucket, f"batch/reports/{result.run_key}/report.json"))
    assert report["status"] == "succeeded" and report["counts"]["scored"] == 3000
    assert set(report["models"]) == {"churn-lr", "churn-hgb"}
    assert report["models"]["churn-hgb"]["drift_psi"] is not None
    assert 0.5 < report["agreement"]["churn-lr|churn-hgb"]["same_side_share"] <= 1
    [trail] = audit.history(batch_stack, f"batch:{result.run_key}")
    assert trail["outcome"] == "succeeded" and trail["input"]["checksum"] and trail["models"] == churn_models


def test_planted_bad_rows_are_quarantined_with_every_reason(batch_stack: Settings) -> None:
    uri = drop(batch_stack, "bad.csv", 2000, bad_rows=30, seed=4)
    result = run_batch(batch_stack, RunRequest(uri, "churn-lr"))
    assert (result.records, result.scored, result.quarantined) == (2000, 1970, 30)
    assert result.failures["f3.max"] == 10 and result.failures["segment.allowed"] == 10
    assert result.failures["seen_after_signup"] == 10
    quarantine = results_table(batch_stack, f"batch/quarantine/{result.run_key}")
    assert quarantine.num_rows == 30
    reasons = quarantine.column("reasons").to_pylist()
    assert sorted(r[0].split(":")[0] for r in reasons).count("f3") == 10
    expected_bad = set(make_records(2000, seed=4, bad_rows=30)[0].to_pandas().pipe(
        lambda f: f[(f.f3 > 50) | (f.segment == "martian") | (f.last_seen < f.signup_date)]).record_id)
    assert set(quarantine.column("record_id").to_pylist()) == expected_bad
    assert predictions(batch_stack) == 1970


def test_a_wrong_schema_fails_fast_and_writes_nothing(batch_stack: Settings) -> None:
    table, _ = make_records(500, seed=2)
    uri = f"s3://{batch_stack.data_bucket}/{batch_stack.drop_prefix}wrong.parquet"
    fs, path = FsConfig.from_settings(batch_stack).filesystem(uri)
    pq.write_table(table.drop(["f5", "f6"]), path, filesystem=fs)
    with pytest.raises(BatchFailed, match=r"missing required column.s. f5, f6"):
        run_batch(batch_stack, RunRequest(uri, "churn-lr"))
    assert ObjectStore.for_settings(batch_stack).list_keys(batch_stack.artifacts_bucket, "batch/results/") == []
    assert predictions(batch_stack) == 0
    [run] = DocumentStore.for_settings(batch_stack).collection(Collections.BATCH_RUNS).find({})
    assert run["status"] == "failed" and "f5" in run["error"]


def test_too_many_bad_records_fail_the_run_before_anything_is_written(batch_stack: Settings) -> None:
    uri = drop(batch_stack, "mostly-bad.parquet", 1000, bad_rows=120, seed=3)
    with pytest.raises(BatchFailed, match=r"120 of 1,000 records \(12.0%\) fail validation, over the 5% limit"):
        run_batch(batch_stack, RunRequest(uri, "churn-lr"))
    store = ObjectStore.for_settings(batch_stack)
    assert store.list_keys(batch_stack.artifacts_bucket, "batch/results/") == []
    assert store.list_keys(batch_stack.artifacts_bucket, "batch/staging/") == []
    assert predictions(batch_stack) == 0
    report_keys = store.list_keys(batch_stack.artifacts_bucket, "batch/reports/")
    assert any(k.endswith("report.html") for k in report_keys)


def test_the_spark_validation_stage_counts_the_same_failures(batch_stack: Settings) -> None:
    uri = drop(batch_stack, "check.csv", 1500, bad_rows=24, seed=8)
    job = BatchJob(batch_stack, RunRequest(uri, "churn-lr"))
    key, _ = job.prepare()
    spark_counts = job.validate(key)
    arrow_counts = job.score(key)
    assert spark_counts["records"] == arrow_counts["records"] == 1500
    assert spark_counts["bad"] == arrow_counts["quarantined"] == 24
    assert {r: c for r, c in spark_counts["failures"].items() if c} == \
        {r: c for r, c in arrow_counts["failures"].items() if c}
