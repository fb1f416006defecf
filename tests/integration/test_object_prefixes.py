"""ObjectStore's folder operations (list, copy, move, delete under a prefix), the ETag and the
download, against the real S3 emulator; and DocumentStore.insert_new against MongoDB."""

from __future__ import annotations

from pathlib import Path

import pytest

from nimbus.config import Settings
from nimbus.errors import StoreUnavailable
from nimbus.stores.documents import Collections, DocumentStore
from nimbus.stores.objects import ObjectStore, S3Uri

pytestmark = pytest.mark.integration


def put(store: ObjectStore, bucket: str, keys: list[str]) -> None:
    for key in keys:
        store.put_bytes(bucket, key, key.encode())


def test_list_under_takes_the_key_as_a_folder(clean_stack: Settings) -> None:
    store, bucket = ObjectStore.for_settings(clean_stack), clean_stack.artifacts_bucket
    put(store, bucket, ["run/a/1.parquet", "run/a/2.parquet", "run/ab/3.parquet", "run/b/4.parquet"])
    assert store.list_under(S3Uri(bucket, "run/a")) == [S3Uri(bucket, "run/a/1.parquet"),
                                                       S3Uri(bucket, "run/a/2.parquet")]
    assert store.list_under(S3Uri(bucket, "run/nothing/")) == []


def test_delete_under_removes_that_folder_only(clean_stack: Settings) -> None:
    store, bucket = ObjectStore.for_settings(clean_stack), clean_stack.artifacts_bucket
    put(store, bucket, ["run/a/1", "run/a/deep/2", "run/ab/3"])
    assert store.delete_under(S3Uri(bucket, "run/a")) == 2
    assert store.list_keys(bucket, "run/") == ["run/ab/3"]
    assert store.delete_under(S3Uri(bucket, "run/a")) == 0


def test_delete_under_deletes_past_one_request_of_1000_keys(clean_stack: Settings) -> None:
    store, bucket = ObjectStore.for_settings(clean_stack), clean_stack.artifacts_bucket
    put(store, bucket, [f"many/{i:04d}" for i in range(1003)])
    assert store.delete_under(S3Uri(bucket, "many/")) == 1003
    assert store.list_keys(bucket, "many/") == []


def test_copy_under_keeps_relative_keys_and_the_source(clean_stack: Settings) -> None:
    store = ObjectStore.for_settings(clean_stack)
    data, artifacts = clean_stack.data_bucket, clean_stack.artifacts_bucket
    put(store, data, ["in/x/1.csv", "in/x/sub/2.csv"])
    assert store.copy_under(S3Uri(data, "in/x"), S3Uri(artifacts, "out/y/")) == 2
    assert store.list_keys(artifacts, "out/") == ["out/y/1.csv", "out/y/sub/2.csv"]
    assert store.get_bytes(artifacts, "out/y/sub/2.csv") == b"in/x/sub/2.csv"
    assert store.list_keys(data, "in/") == ["in/x/1.csv", "in/x/sub/2.csv"]


def test_move_under_leaves_nothing_at_the_source(clean_stack: Settings) -> None:
    store, bucket = ObjectStore.for_settings(clean_stack), clean_stack.artifacts_bucket
    put(store, bucket, ["staging/k/scored/part-00000.parquet", "staging/k/scored/part-00001.parquet"])
    assert store.move_under(S3Uri(bucket, "staging/k/scored/"), S3Uri(bucket, "results/k")) == 2
    assert store.list_keys(bucket, "staging/") == []
    assert store.list_keys(bucket, "results/") == ["results/k/part-00000.parquet", "results/k/part-00001.parquet"]


def test_etag_is_the_same_for_the_same_bytes_and_download_copies_them(clean_stack: Settings, tmp_path: Path) -> None:
    store, bucket = ObjectStore.for_settings(clean_stack), clean_stack.data_bucket
    first = store.put_bytes(bucket, "same/1", b"payload")
    store.put_bytes(bucket, "same/2", b"payload")
    store.put_bytes(bucket, "other", b"different")
    assert store.etag(bucket, "same/1") == store.etag(bucket, "same/2") == first != store.etag(bucket, "other")
    store.download(bucket, "same/1", str(tmp_path / "copy"))
    assert (tmp_path / "copy").read_bytes() == b"payload"


def test_a_missing_object_is_a_store_error_not_a_boto_one(clean_stack: Settings, tmp_path: Path) -> None:
    store = ObjectStore.for_settings(clean_stack)
    with pytest.raises(StoreUnavailable):
        store.etag(clean_stack.data_bucket, "no/such/key")
    with pytest.raises(StoreUnavailable):
        store.download(clean_stack.data_bucket, "no/such/key", str(tmp_path / "x"))
    with pytest.raises(StoreUnavailable):
        store.delete_under(S3Uri("no-such-bucket", "x/"))


def test_insert_new_skips_documents_already_there(clean_stack: Settings) -> None:
    store = DocumentStore.for_settings(clean_stack)
    docs = [{"_id": f"run:{i}", "record_id": i} for i in range(5)]
    assert store.insert_new(Collections.BATCH_PREDICTIONS, docs[:3]) == (3, 0)
    assert store.insert_new(Collections.BATCH_PREDICTIONS, docs) == (2, 3)  # a retried task
    assert store.insert_new(Collections.BATCH_PREDICTIONS, []) == (0, 0)
    assert store.collection(Collections.BATCH_PREDICTIONS).count_documents({}) == 5
