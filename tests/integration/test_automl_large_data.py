"""AutoML's large-data path against the S3 emulator, MongoDB-wire server, Ray and MLflow."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nimbus.automl.data import scan, training_chunks
from nimbus.automl.jobs import JobRequest, get_job, submit
from nimbus.automl.runner import run_job
from nimbus.config import Settings
from nimbus.stores.objects import ObjectStore

pytestmark = pytest.mark.integration


def churn(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tenure, spend = rng.integers(1, 72, rows), rng.gamma(2.0, 30.0, rows)
    plan = rng.choice(["basic", "plus", "pro"], rows)
    churned = np.where(tenure / 72 + rng.normal(scale=0.3, size=rows) < 0.4, "yes", "no").astype(object)
    churned[rng.choice(rows, 25, replace=False)] = "paused"  # a rare class
    return pd.DataFrame({"id": np.arange(rows), "tenure": tenure, "spend": spend, "plan": plan, "churned": churned})


def put(settings: Settings, key: str, frame: pd.DataFrame) -> str:
    data = frame.to_csv(index=False).encode() if key.endswith(".csv") else frame.to_parquet(index=False)
    ObjectStore.for_settings(settings).put_bytes(settings.data_bucket, key, data)
    return f"s3://{settings.data_bucket}/{key}"


def test_a_csv_and_a_folder_of_csv_parts_in_s3_are_sampled_in_one_pass(clean_stack: Settings) -> None:
    data = churn(20_000)
    settings = clean_stack.model_copy(update={"automl_memory_mb": 0.05})
    single = scan(settings, put(settings, "datasets/churn.csv", data), "churned")
    for n, rows in enumerate(np.array_split(np.arange(len(data)), 4)):
        put(settings, f"datasets/churn-parts/part-{n}.csv", data.iloc[rows])
    parts = scan(settings, f"s3://{settings.data_bucket}/datasets/churn-parts/", "churned")
    for sampled in (single, parts):
        assert sampled.rows == 20_000 and sampled.class_counts == data["churned"].value_counts().to_dict()
        assert not sampled.fits and len(sampled.training()) < 2_000
        assert (sampled.train["churned"] == "paused").sum() >= 15  # the rare class is kept
        assert not set(sampled.test["id"]) & set(sampled.train["id"])
    assert single.train["id"].tolist() == parts.train["id"].tolist()  # parts in order: the same rows drawn
    streamed = pd.concat(training_chunks(settings, parts))
    assert not set(streamed["id"]) & set(parts.test["id"]) and len(streamed) > 10 * len(parts.training())


def test_submit_reads_only_the_first_rows_and_the_job_checks_the_rest(clean_stack: Settings) -> None:
    # Sorted by class: the first 50,000 rows hold one class, which alone would be refused.
    data = churn(60_000).assign(churned=lambda d: np.where(d["id"] < 59_000, "no", "yes"))
    uri = put(clean_stack, "datasets/sorted.parquet", data)
    job = submit(clean_stack, JobRequest(dataset=uri, target="churned", budget_s=10), owner="test")
    assert job["status"] == "queued" and job["profile"]["rows"] == 60_000  # the count from the footer
    assert scan(clean_stack, uri, "churned").class_counts == {"no": 59_000, "yes": 1_000}


@pytest.mark.slow
def test_a_job_over_the_memory_budget_refits_incrementally_and_registers_a_model(
        clean_stack: Settings, ray_ready: None) -> None:
    import mlflow

    data = churn(30_000, seed=1)
    settings = clean_stack.model_copy(update={"automl_memory_mb": 0.05})
    uri = put(settings, "datasets/big-churn.parquet", data.drop(columns=["id"]))
    job_id = submit(settings, JobRequest(dataset=uri, target="churned", budget_s=25, include=["logistic"],
                                         metric="accuracy"), owner="test")["_id"]
    job = run_job(settings, job_id)
    assert job["status"] == "succeeded" and get_job(settings, job_id)["data"]["fits_memory"] is False
    refit = job["refit"]
    assert refit["incremental"] and refit["differs_from_winner"] and refit["searched"] == "logistic"
    assert refit["rows"] > 10 * job["data"]["sample_rows"] and refit["chunks"] >= 1
    assert job["data"]["class_counts"]["paused"] == 25 and job["data"]["rows"] == 30_000
    mlflow.set_tracking_uri(settings.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{job['model']['name']}/{job['model']['version']}")
    predicted = np.asarray(model.predict(data.drop(columns=["id", "churned"]).head(200)))
    assert (predicted == data["churned"].head(200).to_numpy()).mean() > 0.7
