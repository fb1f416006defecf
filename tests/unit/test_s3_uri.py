"""S3Uri: the one parser and formatter of ``s3://bucket/key``."""

from __future__ import annotations

import pytest

from nimbus.errors import InvalidInput
from nimbus.stores.objects import S3Uri


@pytest.mark.parametrize(("text", "bucket", "key"), [
    ("s3://nimbus-data/incoming/t1.parquet", "nimbus-data", "incoming/t1.parquet"),
    ("s3://nimbus-data/incoming/", "nimbus-data", "incoming/"),
    ("s3://nimbus-data/", "nimbus-data", ""),
    ("s3://nimbus-data", "nimbus-data", ""),
    ("s3://my.bucket-1/a b/c.csv", "my.bucket-1", "a b/c.csv"),
])
def test_good_uris_parse_into_bucket_and_key(text: str, bucket: str, key: str) -> None:
    uri = S3Uri.parse(text)
    assert (uri.bucket, uri.key) == (bucket, key)
    assert S3Uri.parse(str(uri)) == uri


def test_formatting_gives_back_the_uri() -> None:
    assert str(S3Uri("nimbus-data", "incoming/t1.parquet")) == "s3://nimbus-data/incoming/t1.parquet"
    assert str(S3Uri("nimbus-data")) == "s3://nimbus-data/"


@pytest.mark.parametrize("text", [
    "nimbus-data/incoming/t1.parquet",  # no scheme
    "s3:/nimbus-data/x",  # one slash
    "S3://nimbus-data/x",  # the scheme is lower case
    "https://nimbus-data/x",
    "s3:///x",  # no bucket
    "s3://",
    "s3://Nimbus_Data/x",  # not a bucket name
    "s3://ab/x",  # too short
    "s3://-data/x",
    "/data/incoming/t1.parquet",
])
def test_bad_uris_are_invalid_input_that_names_them(text: str) -> None:
    with pytest.raises(InvalidInput) as error:
        S3Uri.parse(text)
    assert repr(text) in str(error.value)


def test_is_s3_tells_uris_from_paths() -> None:
    assert S3Uri.is_s3("s3://nimbus-data/x") and not S3Uri.is_s3("/tmp/s3://x")


def test_folder_and_child_keep_one_slash_between_parts() -> None:
    base = S3Uri("nimbus-artifacts", "batch")
    assert base.folder == "batch/"
    assert base.child("results/k/") == S3Uri("nimbus-artifacts", "batch/results/k/")
    assert S3Uri("nimbus-artifacts", "batch/").child("/x.parquet").key == "batch/x.parquet"
    assert S3Uri("nimbus-artifacts").folder == "" and S3Uri("nimbus-artifacts").child("a").key == "a"
