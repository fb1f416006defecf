"""AutoML through its REST API, on a real local Ray, MLflow, MongoDB-wire server and S3 emulator."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sklearn.datasets import load_breast_cancer

from nimbus.api.automl import create_automl_app
from nimbus.config import Settings, get_settings
from nimbus.stores.documents import Collections, DocumentStore
from nimbus.stores.objects import ObjectStore

KEY = {"X-API-Key": "nimbus-local-key"}  # the local stack's key (admin: every scope)

pytestmark = pytest.mark.integration

KEY = {"X-API-Key": "nimbus-local-key"}  # the one place this file's requests get their credentials


def put_csv(settings: Settings, key: str, frame: pd.DataFrame) -> str:
    ObjectStore.for_settings(settings).put_bytes(settings.data_bucket, key, frame.to_csv(index=False).encode())
    return f"s3://{settings.data_bucket}/{key}"


@pytest.fixture
def client(clean_stack: Settings, ray_ready: None) -> TestClient:
    with TestClient(create_automl_app(), headers=KEY) as c:
        yield c


def jobs_count(settings: Settings) -> int:
    return DocumentStore.for_settings(settings).collection(Collections.AUTOML_JOBS).count_documents({})


def wait_done(client: TestClient, job_id: str) -> dict:
    """Run the queued job here, as a runner process does (the API only queues it; this process's Ray is the
    session's), then the job as the API answers it."""
    from nimbus.automl.runner import run_job
    from nimbus.errors import NimbusError

    try:
        run_job(get_settings(), job_id)
    except NimbusError:  # a failed job: recorded in its document, read below
        pass
    body = client.get(f"/automl/jobs/{job_id}").json()
    assert body["status"] in ("succeeded", "failed"), body
    return body


@pytest.mark.slow
def test_a_job_finishes_in_budget_registers_a_model_and_compares(client: TestClient, clean_stack: Settings) -> None:
    frame = load_breast_cancer(as_frame=True).frame
    frame["target"] = np.where(frame["target"] == 1, "benign", "malignant")
    uri = put_csv(clean_stack, "datasets/cancer.csv", frame)
    accepted = client.post("/automl/jobs", json={"dataset": uri, "target": "target", "budget_s": 30})
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["task"] == "classification" and accepted.json()["metric"] == "roc_auc"
    job = wait_done(client, accepted.json()["job_id"])
    assert job["status"] == "succeeded", job.get("error")
    # The budget as the job planned it (that it holds is the fake-clock unit tests' part):
    # 30 s, of which 30% (9 s) is kept from the search and 20% (6 s, the minimum) from the refit.
    budget = job["budget"]
    assert (budget["total_s"], budget["after_search_s"], budget["after_refit_s"]) == (30, 9, 6)
    timings = job["timings"]
    # the quick defaults first, in the runner, then the distributed search with what was left of its share
    assert "search_skipped" not in timings, timings
    assert 0 < timings["first_result_s"] <= timings["setup_s"] + timings["first_results_s"] + 1
    assert 0 < budget["search_s"] <= timings["search_budget_s"] <= 30 - 9
    assert job["trials"] == job["progress"]["trials"] >= 5 and 0.9 < job["test"]["value"] <= 1
    assert job["model"]["name"] == f"automl-{job['job_id']}" and job["model"]["version"] == "1"
    assert job["test"]["ci95"][0] <= job["test"]["value"] <= job["test"]["ci95"][1]

    import mlflow

    mlflow.set_tracking_uri(clean_stack.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{job['model']['name']}/{job['model']['version']}")
    predictions = model.predict(frame.drop(columns=["target"]).head(10))
    assert set(np.asarray(predictions).tolist()) <= {"benign", "malignant"}

    report_key = job["exports"]["report"].split("/", 3)[3]
    report = json.loads(ObjectStore.for_settings(clean_stack).get_bytes(clean_stack.artifacts_bucket, report_key))
    assert report["importances"] and {"feature", "importance"} <= set(report["importances"][0])
    assert sum(map(sum, report["diagnostics"]["confusion_matrix"])) == job["test"]["rows"]
    explained = report["explanations"]["rows"]  # SHAP: base value + contributions = prediction
    assert explained and all(r["base_value"] + sum(c["contribution"] for c in r["contributions"]) + r["others"]
                             == pytest.approx(r["prediction"]) for r in explained)
    assert report["learning_curve"]["points"] and report["learning_curve"]["metric"] == "roc_auc"
    assert ("onnx" in job["exports"]) != ("onnx_error" in job["exports"])  # an export, or the reason there is none
    if "onnx" in job["exports"]:
        from nimbus.automl.export import predict_onnx
        from nimbus.automl.profile import Profile

        onnx = ObjectStore.for_settings(clean_stack).get_bytes(clean_stack.artifacts_bucket,
                                                                job["exports"]["onnx"].split("/", 3)[3])
        labels = predict_onnx(onnx, frame.head(10), Profile(**job["profile"]), report["onnx"]["numeric_inputs"])[0]
        assert set(np.asarray(labels).ravel().tolist()) <= {"benign", "malignant"}
    board = client.get(f"/automl/jobs/{job['job_id']}/leaderboard").json()
    [chosen] = [row for row in board if row["chosen"]]
    assert {row["algorithm"] for row in board if row["node"] == "runner"} >= {"logistic", "hist_gb"}
    # each configuration once (the search may propose one again)
    assert chosen == job["winner"] and len(board) <= job["progress"]["trials"]
    assert len({json.dumps(row["params"], sort_keys=True) for row in board}) == len(board)
    complete = [row["score"] for row in board if row["complete"]]  # fully evaluated ones first, best first
    assert complete == sorted(complete, reverse=True) and board[: len(complete)] == [r for r in board if r["complete"]]

    second = client.post("/automl/jobs", json={"dataset": uri, "target": "target", "budget_s": 15,
                                               "include": ["logistic"]}).json()
    finished = wait_done(client, second["job_id"])
    assert finished["status"] == "succeeded", finished.get("error")
    ranked = client.post("/automl/compare", json={"jobs": [second["job_id"], job["job_id"]]}).json()
    assert {r["job"] for r in ranked} == {job["job_id"], second["job_id"]}
    assert ranked[0]["test"]["value"] >= ranked[1]["test"]["value"]


@pytest.mark.parametrize(
    ("frame", "body", "fragment"),
    [
        (pd.DataFrame({"a": range(50), "y": [0, 1] * 25}), {"target": "label"}, "target column 'label' is not in"),
        (pd.DataFrame({"a": range(50), "y": [1] * 50}), {"target": "y"}, "has one class"),
        (pd.DataFrame({"a": range(10), "y": [0, 1] * 5}), {"target": "y"}, "has 10 rows; at least 20"),
        (pd.DataFrame({"a": range(50), "y": [0, 1] * 25}), {"target": "y", "metric": "r2"}, "does not fit a classification"),
        (pd.DataFrame({"a": range(50), "y": [0, 1] * 25}), {"target": "y", "include": ["deep_net"]}, "unknown algorithm"),
    ],
)
def test_bad_submissions_get_a_400_and_make_no_job(client: TestClient, clean_stack: Settings, frame: pd.DataFrame,
                                                   body: dict, fragment: str) -> None:
    uri = put_csv(clean_stack, "datasets/bad.csv", frame)
    answer = client.post("/automl/jobs", json={"dataset": uri, "budget_s": 10, **body})
    assert answer.status_code == 400 and fragment in answer.json()["detail"]
    assert jobs_count(clean_stack) == 0


def test_an_unreadable_file_gets_a_400(client: TestClient, clean_stack: Settings) -> None:
    ObjectStore.for_settings(clean_stack).put_bytes(clean_stack.data_bucket, "datasets/x.parquet", b"not parquet")
    answer = client.post("/automl/jobs", json={"dataset": f"s3://{clean_stack.data_bucket}/datasets/x.parquet",
                                               "target": "y"})
    assert answer.status_code == 400 and "cannot be read" in answer.json()["detail"]
    missing = client.post("/automl/jobs", json={"dataset": "s3://nimbus-data/datasets/none.csv", "target": "y"})
    assert missing.status_code == 400 and "does not exist" in missing.json()["detail"]
    assert client.post("/automl/jobs", json={"target": "y"}).status_code == 422
    assert jobs_count(clean_stack) == 0


def test_an_uploaded_file_can_be_submitted(client: TestClient, clean_stack: Settings) -> None:
    data = io.BytesIO(pd.DataFrame({"a": range(30), "y": [0, 1, 1] * 10}).to_csv(index=False).encode())
    answer = client.post("/automl/uploads", files={"file": ("small.csv", data, "text/csv")})
    assert answer.status_code == 200
    upload_id = answer.json()["upload_id"]
    assert answer.json()["dataset"].endswith(f"datasets/uploads/{upload_id}/small.csv")
    assert client.post("/automl/uploads", files={"file": ("x.txt", b"hi", "text/plain")}).status_code == 400


def test_an_unknown_job_is_a_404(client: TestClient) -> None:
    assert client.get("/automl/jobs/nope").status_code == 404


@pytest.mark.slow
def test_every_trial_is_an_mlflow_run_of_the_jobs_experiment(clean_stack: Settings, ray_ready: None) -> None:
    import mlflow

    from nimbus.automl.jobs import JobRequest, submit
    from nimbus.automl.runner import run_job

    frame = pd.DataFrame({"x1": np.arange(300) % 17, "x2": np.sin(np.arange(300)), "y": np.arange(300) % 7 * 1.5})
    uri = put_csv(clean_stack, "datasets/reg.csv", frame)
    job = run_job(clean_stack, submit(clean_stack, JobRequest(dataset=uri, target="y", budget_s=15, max_trials=12),
                                      owner="test")["_id"])
    assert job["profile"]["task"] == "regression" and job["metric"] == "r2"
    client = mlflow.MlflowClient(clean_stack.tracking_uri)
    experiment = client.get_experiment_by_name(f"automl-{job['_id']}")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    trials = [r for r in runs if r.info.run_name.startswith("trial-")]
    assert len(trials) == job["trials"] <= 12
    assert all("cv_r2" in r.data.metrics and "algorithm" in r.data.params for r in trials)
    [winner] = [r for r in runs if r.info.run_name == "winner"]
    assert winner.data.metrics["test_r2"] == pytest.approx(job["test"]["value"])


@pytest.mark.slow
def test_a_finished_job_frees_its_slot_and_tags_its_named_model_with_its_owner(clean_stack: Settings,
                                                                               ray_ready: None) -> None:
    from nimbus.automl.jobs import OWNER_TAG, JobRequest, get_job, submit
    from nimbus.automl.runner import run_job
    from nimbus.stores.registry import Registry

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    uri = put_csv(clean_stack, "datasets/owned.csv",
                  pd.DataFrame(x, columns=list("abc")).assign(y=np.where(x[:, 0] > 0, "p", "n")))
    name = f"owned-{np.random.default_rng().integers(1 << 40):x}"  # the registry outlives the clean stack
    job = submit(clean_stack, JobRequest(dataset=uri, target="y", budget_s=120, include=["logistic"], max_trials=3,
                                         name=name), owner="gina")
    done = run_job(clean_stack, job["_id"])
    assert done["status"] == "succeeded" and "slot" not in get_job(clean_stack, job["_id"])
    assert done["model"]["name"] == f"automl-{name}"
    assert Registry.for_settings(clean_stack).model_tag(f"automl-{name}", OWNER_TAG) == "gina"
