"""The batch run's trust boundaries (issue 11), each through the real stores and Spark:
compressed inputs inflate only up to a limit, S3 keys are staged inside the home only, a
record id two records share is quarantined (not silently dropped by MongoDB), and only
versions an audited promotion vouches for are loaded (unpickled)."""

from __future__ import annotations

import gzip
import io
import json
import re
import uuid
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from nimbus import audit, governance
from nimbus.batch.examples import make_records, write_records
from nimbus.batch.io import FsConfig, UnsafeKey
from nimbus.batch.job import BatchFailed, BatchJob, RunRequest, run_batch
from nimbus.batch.models import UntrustedModel
from nimbus.batch.trigger import handle
from nimbus.config import Settings
from nimbus.events import ScheduledTrigger
from nimbus.stores.documents import Collections, DocumentStore
from nimbus.stores.objects import ObjectStore
from tests.integration.test_batch import predictions, results_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def runs(settings: Settings) -> list[dict]:
    return list(DocumentStore.for_settings(settings).collection(Collections.BATCH_RUNS).find({}))


def assert_nothing_written(settings: Settings) -> None:
    """No results, quarantine or staging parts, and no predictions in MongoDB."""
    store = ObjectStore.for_settings(settings)
    for folder in ("batch/results/", "batch/quarantine/", "batch/staging/"):
        assert store.list_keys(settings.artifacts_bucket, folder) == [], folder
    assert predictions(settings) == 0


# ---- finding 1: a .csv.gz was decompressed whole into memory ------------------------------------
def test_a_gzip_bomb_is_refused_naming_the_file_and_the_limit(batch_stack: Settings) -> None:
    settings = batch_stack.model_copy(update={"batch_max_decompressed_mb": 1})
    limit = 1 << 20
    one, _ = make_records(1, seed=6)
    row = io.BytesIO()
    pacsv.write_csv(one, row)
    header, record = row.getvalue().split(b"\n", 1)
    plain = header + b"\n" + record * (3 * limit // len(record))  # ~3 MB of text...
    bomb = gzip.compress(plain, 9)
    assert len(plain) > 2 * limit and len(bomb) < limit // 10  # ...from a file a tenth of the limit
    store = ObjectStore.for_settings(settings)
    key = f"{settings.drop_prefix}bomb.csv.gz"
    store.put_bytes(settings.data_bucket, key, bomb, "application/gzip")
    uri = f"s3://{settings.data_bucket}/{key}"

    with pytest.raises(BatchFailed, match=r"bomb\.csv\.gz: decompresses to more than 1 MB"):
        run_batch(settings, RunRequest(uri, "churn-lr"))
    assert_nothing_written(settings)
    [run] = runs(settings)
    assert run["status"] == "failed" and "bomb.csv.gz" in run["error"] and "1 MB" in run["error"]
    assert store.list_keys(settings.data_bucket, settings.drop_prefix) == [key]  # the drop file stays
    [trail] = audit.history(settings, f"batch:{run['_id']}")
    assert trail["outcome"] == "failed" and "1 MB" in trail["details"]["error"]
    report = json.loads(store.get_bytes(settings.artifacts_bucket, f"batch/reports/{run['_id']}/report.json"))
    assert report["status"] == "failed" and "decompresses" in report["error"]

    # the Spark validation stage (Airflow's validate task) refuses it before its JVM inflates it
    job = BatchJob(settings, RunRequest(uri, "churn-lr"))
    key_, _ = job.prepare()
    with pytest.raises(BatchFailed, match="decompresses to more than 1 MB"):
        job.validate(key_)
    assert_nothing_written(settings)


def test_a_csv_gz_under_the_limit_is_streamed_and_scored(batch_stack: Settings) -> None:
    settings = batch_stack.model_copy(update={"batch_max_decompressed_mb": 1})
    table, _ = make_records(800, seed=7, bad_rows=3)
    text = io.BytesIO()
    pacsv.write_csv(table, text)
    assert len(text.getvalue()) < 1 << 20
    key = f"{settings.drop_prefix}small.csv.gz"
    ObjectStore.for_settings(settings).put_bytes(settings.data_bucket, key, gzip.compress(text.getvalue()),
                                                 "application/gzip")
    result = run_batch(settings, RunRequest(f"s3://{settings.data_bucket}/{key}", "churn-lr"))
    assert (result.status, result.scored, result.quarantined) == ("succeeded", 797, 3)


# ---- finding 2: the local staging path was built from the S3 key unconfined ---------------------
def test_an_s3_key_escaping_the_home_is_refused_and_nothing_is_written_outside(batch_stack: Settings) -> None:
    settings = batch_stack
    home = settings.home.resolve()
    escape = f"escape-{uuid.uuid4().hex}.csv"
    bad_key = f"{settings.drop_prefix}evil/" + "../" * 7 + escape
    naive = (home / "batch" / "inputs" / settings.data_bucket / bad_key).resolve()  # where the old code wrote
    assert not naive.is_relative_to(home) and not naive.exists()
    store = ObjectStore.for_settings(settings)
    good = f"s3://{settings.data_bucket}/{settings.drop_prefix}good.parquet"
    write_records(settings, good, 300, seed=13)
    csv = io.BytesIO()
    pacsv.write_csv(make_records(50, seed=14)[0], csv)
    store.client.put_object(Bucket=settings.data_bucket, Key=bad_key, Body=csv.getvalue())  # S3 keeps it verbatim
    assert bad_key in store.list_keys(settings.data_bucket, settings.drop_prefix)

    # a folder holding it: refused, naming the key, before any run exists
    folder = f"s3://{settings.data_bucket}/{settings.drop_prefix}evil/"
    with pytest.raises(UnsafeKey, match=re.escape(f"S3 key {bad_key!r} in {settings.data_bucket}: refused")):
        run_batch(settings, RunRequest(folder, "churn-lr"))
    assert runs(settings) == [] and not naive.exists()

    # the Spark validation stage, handed the folder: refused, nothing downloaded anywhere
    job = BatchJob(settings, RunRequest(folder, "churn-lr"))
    with pytest.raises(UnsafeKey, match=escape):
        job.prepare()
    assert not naive.exists()
    assert not any(p.name == escape for p in home.rglob("*"))

    # the hourly sweep reports the bad key and still scores the good file
    results = handle(ScheduledTrigger(rule="batch-sweep", time=datetime.now(UTC), source="aws:events"), settings)
    by_input = {r.get("input") or r.get("run_key"): r for r in results}
    [refusal] = [r for r in results if r["status"] == "failed"]
    assert escape in refusal["message"] and refusal["input"].endswith(escape)
    assert [r["status"] for r in results if r is not refusal] == ["succeeded"], by_input
    assert not naive.exists()


# ---- finding 3: a duplicate record_id was silently dropped by MongoDB's insert_new ---------------
def test_duplicate_record_ids_are_quarantined_with_their_reason(batch_stack: Settings) -> None:
    settings = batch_stack
    fs = FsConfig.from_settings(settings)
    first, _ = make_records(500, seed=15)
    second, _ = make_records(500, seed=16, start=500)
    ids = second.column("record_id").to_pylist()
    ids[10], ids[20] = "r5", "r6"  # shared with the first file (another split)
    ids[30] = ids[40]  # shared within the second file
    shared = {"r5", "r6", ids[40]}
    second = second.set_column(0, "record_id", pa.array(ids))
    folder = f"s3://{settings.data_bucket}/{settings.drop_prefix}dups/"
    for name, table in (("a.parquet", first), ("b.parquet", second)):
        handle_fs, path = fs.filesystem(folder + name)
        pq.write_table(table, path, filesystem=handle_fs)

    job = BatchJob(settings, RunRequest(folder, "churn-lr"))
    key, _ = job.prepare()
    assert job.validate(key)["failures"]["record_id.unique"] == 6  # the Spark stage counts them the same
    result = run_batch(settings, RunRequest(folder, "churn-lr"))
    assert (result.status, result.records, result.scored, result.quarantined) == ("succeeded", 1000, 994, 6)
    assert result.failures["record_id.unique"] == 6

    quarantine = results_table(settings, f"batch/quarantine/{result.run_key}")
    assert sorted(quarantine.column("record_id").to_pylist()) == sorted(2 * list(shared))
    assert all(reasons == ["record_id: duplicate record_id (another record of the input has the same one)"]
               for reasons in quarantine.column("reasons").to_pylist())
    scored = results_table(settings, f"batch/results/{result.run_key}").column("record_id").to_pylist()
    assert len(scored) == len(set(scored)) == 994 and not shared & set(scored)
    mongo = DocumentStore.for_settings(settings).collection(Collections.BATCH_PREDICTIONS)
    assert predictions(settings) == 994 and mongo.count_documents({"record_ids": {"$in": sorted(shared)}}) == 0
    report = json.loads(ObjectStore.for_settings(settings).get_bytes(
        settings.artifacts_bucket, f"batch/reports/{result.run_key}/report.json"))
    assert report["counts"]["duplicates"] == 6 and report["validation_failures"]["record_id.unique"] == 6


# ---- finding 4: batch unpickled whatever an unauthenticated MLflow's alias pointed at ------------
def test_only_versions_an_audited_promotion_vouches_for_are_loaded(batch_stack: Settings,
                                                                   churn_models: dict[str, str]) -> None:
    from mlflow import MlflowClient

    settings = batch_stack
    uri = f"s3://{settings.data_bucket}/{settings.drop_prefix}trust.parquet"
    write_records(settings, uri, 400, seed=17)
    # Someone who can reach the MLflow server: two versions, the alias set and its history tag forged.
    mlflow = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)
    name = f"planted-{uuid.uuid4().hex[:8]}"
    source = mlflow.get_model_version("churn-lr", churn_models["churn-lr"])
    mlflow.create_registered_model(name)
    model_id = source.source.rsplit("/", 1)[-1]  # MLflow 3: a version's source is its logged model
    one, two = (mlflow.create_model_version(name, source.source, run_id=source.run_id, model_id=model_id).version
                for _ in range(2))
    mlflow.set_registered_model_alias(name, "champion", one)
    mlflow.set_registered_model_tag(name, "nimbus.history.champion", json.dumps([str(one)]))

    with pytest.raises(UntrustedModel, match=rf"{name}@champion: .*no audited move of it is on record"):
        run_batch(settings, RunRequest(uri, f"{name}@champion"))
    with pytest.raises(UntrustedModel, match=rf"{name}@{one}: version {one} was never promoted"):
        run_batch(settings, RunRequest(uri, f"churn-lr,{name}@{one}"))
    assert runs(settings) == []
    assert_nothing_written(settings)

    governance.promote(settings, name, str(two), reason="reviewed")  # the audited path: champion 1 -> 2
    result = run_batch(settings, RunRequest(uri, f"{name}@champion"))
    assert result.status == "succeeded" and result.models == {name: str(two)} and result.scored == 400

    mlflow.set_registered_model_alias(name, "champion", one)  # moved back, outside the audited path
    later = write_records(settings, uri.replace("trust", "trust2"), 300, seed=19)  # a new input: a new run
    with pytest.raises(UntrustedModel, match=rf"points at version {one} .*last audited move was to version {two}"):
        run_batch(settings, RunRequest(later, f"{name}@champion"))
    with pytest.raises(UntrustedModel, match=rf"version {one} was never promoted"):  # an audited move's "from"
        run_batch(settings, RunRequest(later, f"{name}@{one}"))
    assert len(runs(settings)) == 1 and predictions(settings) == 400
    # an operator vouches for the alias where it stands (`nimbus models promote NAME 1 --force`): audited, trusted
    governance.promote(settings, name, str(one), reason="reviewed the direct move", force=True)
    vouched = run_batch(settings, RunRequest(later, f"{name}@champion"))
    assert vouched.status == "succeeded" and vouched.models == {name: str(one)}


def test_an_ordinary_key_is_validated_where_the_spark_tasks_read_it(batch_stack: Settings) -> None:
    """Keys with folders and spaces pass; the validate stage's tasks read the input from S3 themselves
    (a Spark Connect server cannot see a copy on the client), so nothing is copied under the home."""
    uri = f"s3://{batch_stack.data_bucket}/{batch_stack.drop_prefix}2026/ok file.csv"
    write_records(batch_stack, uri, 200, seed=18)
    job = BatchJob(batch_stack, RunRequest(uri, "churn-lr"))
    key, _ = job.prepare()
    assert job.validate(key)["records"] == 200
    assert not any(p.name == "ok file.csv" for p in batch_stack.home.rglob("*"))
