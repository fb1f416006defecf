"""AutoML's trust boundary, its pure parts: which dataset names an HTTP caller may give, upload names
and content, model names, and what the public answers keep out (the HTTP tests are in
tests/integration/test_automl_trust.py)."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from nimbus.automl.inputs import check_content, resolve, safe_name
from nimbus.automl.jobs import JobRequest, public_error, public_job
from nimbus.config import Settings
from nimbus.errors import InvalidInput, StoreUnavailable

SETTINGS = Settings(data_bucket="nimbus-data")
UPLOAD = "0f3c9a1e5b7d4c2a8e6f1b3d5a7c9e0f"


@pytest.mark.parametrize("dataset", [
    "s3://nimbus-data/datasets/churn.csv",
    "s3://nimbus-data/datasets/big/",
    "s3://nimbus-data/datasets/big/part=1/x.parquet",
    f"s3://nimbus-data/datasets/uploads/{UPLOAD}/churn.csv",
])
def test_objects_under_the_data_buckets_datasets_prefix_are_allowed(dataset: str) -> None:
    assert resolve(SETTINGS, dataset, trusted=False) == dataset.rstrip("/")


@pytest.mark.parametrize("dataset", [
    "/etc/passwd", "data.csv", "./datasets/x.csv", "~/x.csv", "file:///etc/passwd", "C:\\data\\x.csv",
    "s3://nimbus-artifacts/datasets/x.csv", "s3://nimbus-data-other/datasets/x.csv", "s3://nimbus-data",
    "s3://nimbus-data/", "s3://nimbus-data/datasets", "s3://nimbus-data/datasets/", "s3://nimbus-data/logs/x.csv",
    "s3://nimbus-data/datasets/../logs/x.csv", "s3://nimbus-data/datasets/./x.csv", "s3://nimbus-data/datasets//x.csv",
    "s3://nimbus-data/datasets/a b.csv", "s3://nimbus-data/datasets/%2e%2e/x.csv", "s3://nimbus-data/datasets/x\\..\\y",
    "s3://nimbus-data/datasets/uploads", "s3://nimbus-data/datasets/uploads/", f"s3://nimbus-data/datasets/uploads/{UPLOAD}",
    f"s3://nimbus-data/datasets/uploads/{UPLOAD}/", "s3://nimbus-data/datasets/uploads/abc/x.csv",
    f"s3://nimbus-data/datasets/uploads/{UPLOAD}/x/y.csv", "S3://nimbus-data/datasets/x.csv",
])
def test_anything_else_is_refused_over_http_and_the_message_names_no_path(dataset: str) -> None:
    with pytest.raises(InvalidInput, match=r"^dataset: ") as refused:
        resolve(SETTINGS, dataset, trusted=False)
    assert dataset not in str(refused.value).replace("s3://nimbus-data/datasets/...", "")  # the rule, not the input
    assert resolve(SETTINGS, dataset, trusted=True) == dataset  # the CLI's own user may name it


@pytest.mark.parametrize(("filename", "stored"), [
    ("churn.csv", "churn.csv"), ("../../etc/x.csv", "x.csv"), ("C:\\Users\\me\\my data.CSV", "my_data.csv"),
    ("..hidden.parquet", "hidden.parquet"), ("t.Parquet", "t.parquet"), ("ünï cödé.csv", "_n_c_d_.csv"),
])
def test_upload_names_are_reduced_to_a_safe_file_name(filename: str, stored: str) -> None:
    assert safe_name(filename) == stored


@pytest.mark.parametrize("filename", [None, "", ".csv", "x.txt", "x.csv.exe", "x.pq", "dir/"])
def test_upload_names_that_are_not_csv_or_parquet_are_refused(filename: str | None) -> None:
    with pytest.raises(InvalidInput, match=r"upload a \.csv or \.parquet file"):
        safe_name(filename)


def test_upload_content_is_parsed_as_the_job_will_parse_it() -> None:
    frame = pd.DataFrame({"a": [1, 2], "y": ["x", "z"]})
    check_content("t.csv", frame.to_csv(index=False).encode(), SETTINGS)
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    check_content("t.parquet", buffer.getvalue(), SETTINGS)
    with pytest.raises(InvalidInput, match="no PAR1 magic"):
        check_content("t.parquet", frame.to_csv(index=False).encode(), SETTINGS)
    with pytest.raises(InvalidInput, match="not UTF-8"):
        check_content("t.csv", "a,y\n1,é\n".encode("latin-1"), SETTINGS)
    with pytest.raises(InvalidInput, match="columns; the limit is 2"):
        check_content("t.csv", b"a,b,y\n1,2,3\n", Settings(automl_max_columns=2))
    with pytest.raises(InvalidInput, match="columns; the limit is 2"):
        wide = io.BytesIO()
        frame.assign(b=1).to_parquet(wide)
        check_content("t.parquet", wide.getvalue(), Settings(automl_max_columns=2))


def test_model_names_are_always_automls_own() -> None:
    def name(given: str | None) -> str:
        return JobRequest(dataset="x", target="y", name=given).model_name("3f2a")

    assert (name("churn-lr"), name("automl-churn"), name(None)) == ("automl-churn-lr", "automl-churn", "automl-3f2a")
    with pytest.raises(ValueError, match="give a name after"):
        name("automl-")
    with pytest.raises(ValueError):
        name("../churn-lr")


def test_public_answers_keep_values_paths_and_urls_out() -> None:
    doc = {"_id": "j", "request": {"dataset": "/home/me/secret.csv", "target": "y"},
           "data": {"rows": 10, "class_counts": {"VALUE-A": 6, "VALUE-B": 4}}}
    view = public_job(doc)
    assert view["data"] == {"rows": 10, "classes": 2} and view["request"]["dataset"] == "(a local file)"
    assert doc["data"]["class_counts"] == {"VALUE-A": 6, "VALUE-B": 4}  # the stored document is untouched
    assert public_job({"_id": "j", "data": {"rows": 5, "class_counts": None}})["data"]["classes"] is None
    assert "VALUE" not in public_error(ValueError("y contains previously unseen labels: ['VALUE-A']"))
    assert "127.0.0.1" not in public_error(StoreUnavailable("s3", "http://127.0.0.1:4566", "refused"))
    assert public_error(InvalidInput("target column 'y' is empty")) == "target column 'y' is empty"
