"""AutoML's trust boundary (issue 11) through the real HTTP app and the real stores (MongoDB-wire
server, S3 emulator): what a caller may name as a dataset, uploads, limits, quotas, model names,
and answers that say what is wrong without the data's values or paths.

Every refusal is checked twice: the 4xx (with the field and the reason, and none of the data) and
that nothing was written (no job document, no new object). No test here starts a Ray job: every
check happens before the run (without ``ray_jobs_url`` an accepted job stays queued for a runner process)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from nimbus.api.automl import create_automl_app
from nimbus.automl import jobs as automl_jobs
from nimbus.automl.jobs import JobRequest, finish, get_job, public_error, submit, update
from nimbus.config import Settings, get_settings
from nimbus.errors import Conflict, InvalidInput
from nimbus.stores.documents import Collections, DocumentStore
from nimbus.stores.objects import ObjectStore

pytestmark = pytest.mark.integration

KEY = {"X-API-Key": "nimbus-local-key"}  # the one place this file's requests get their credentials
SECRET = "TOPSECRET-4242"  # a value planted in the data: no answer may contain it


def good_frame(rows: int = 40) -> pd.DataFrame:
    return pd.DataFrame({"a": range(rows), "b": [x * 0.5 for x in range(rows)], "y": [0, 1] * (rows // 2)})


def put(settings: Settings, key: str, data: bytes, bucket: str | None = None) -> str:
    bucket = bucket or settings.data_bucket
    ObjectStore.for_settings(settings).put_bytes(bucket, key, data)
    return f"s3://{bucket}/{key}"


def put_csv(settings: Settings, key: str, frame: pd.DataFrame, bucket: str | None = None) -> str:
    return put(settings, key, frame.to_csv(index=False).encode(), bucket)


def all_keys(settings: Settings) -> set[str]:
    objects = ObjectStore.for_settings(settings)
    return {f"{b}/{k}" for b in (settings.data_bucket, settings.artifacts_bucket) for k in objects.list_keys(b)}


def job_docs(settings: Settings) -> list[dict]:
    return list(DocumentStore.for_settings(settings).collection(Collections.AUTOML_JOBS).find({}))


@pytest.fixture
def settings(clean_stack: Settings) -> Settings:
    return clean_stack


@pytest.fixture
def limits(settings: Settings) -> dict:
    """Settings fields the app's requests see (``update`` them in a test: small limits, small files)."""
    return {}


@pytest.fixture
def http(settings: Settings, limits: dict) -> Iterator[TestClient]:
    app = create_automl_app()
    app.dependency_overrides[get_settings] = lambda: settings.model_copy(update=limits)
    with TestClient(app, headers=KEY) as client:
        yield client


def refused(answer, status: int, *fragments: str, absent: tuple[str, ...] = ()) -> str:
    """The answer is ``status`` with every fragment in its detail and none of ``absent`` (nor SECRET) anywhere."""
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert isinstance(detail, str)
    for fragment in fragments:
        assert fragment in detail, detail
    for leaked in (SECRET, "127.0.0.1", "localhost", *absent):
        assert leaked not in answer.text, answer.text
    return detail


# ---- finding: datasets are read from the server's disk / any bucket --------------------------
def test_local_paths_other_buckets_and_paths_outside_datasets_are_refused_and_make_no_job(
        http: TestClient, settings: Settings, tmp_path: Path) -> None:
    readable = tmp_path / "server-side"  # a folder of good CSVs on the server's disk: read before the fix
    readable.mkdir()
    good_frame().to_csv(readable / "data.csv", index=False)
    put_csv(settings, "datasets/ok.csv", good_frame())
    elsewhere = put_csv(settings, "datasets/ok.csv", good_frame(), bucket=settings.artifacts_bucket)
    outside = put_csv(settings, "logs/ok.csv", good_frame())
    upload = http.post("/automl/uploads", files={"file": ("mine.csv", good_frame().to_csv(index=False).encode(), "text/csv")})
    assert upload.status_code == 200, upload.text
    before = all_keys(settings)
    cases = {
        str(readable / "data.csv"): "no local paths",
        str(readable): "no local paths",
        f"file://{readable}/data.csv": "no local paths",
        "datasets/ok.csv": "no local paths",  # relative: the server's working folder
        elsewhere: "not another bucket",
        outside: "not outside datasets/",
        f"s3://{settings.data_bucket}/datasets/../logs/ok.csv": "no '..'",
        f"s3://{settings.data_bucket}/datasets//ok.csv": "no '..'",
        f"s3://{settings.data_bucket}/datasets/": "not outside datasets/",
        f"s3://{settings.data_bucket}/datasets/uploads": "not a folder",  # would read everyone's uploads
        f"s3://{settings.data_bucket}/datasets/uploads/": "not a folder",
        "0" * 32: "no upload has that id",
    }
    for dataset, reason in cases.items():
        answer = http.post("/automl/jobs", json={"dataset": dataset, "target": "y", "budget_s": 10})
        refused(answer, 400, "dataset", reason, absent=(str(tmp_path), settings.artifacts_bucket + "/"))
    assert job_docs(settings) == [] and all_keys(settings) == before


def test_the_cli_trust_level_still_reads_local_files(settings: Settings, tmp_path: Path) -> None:
    good_frame().to_csv(tmp_path / "data.csv", index=False)
    request = JobRequest(dataset=str(tmp_path / "data.csv"), target="y", budget_s=10)
    with pytest.raises(InvalidInput, match="no local paths"):
        submit(settings, request, owner="someone")  # untrusted is the default
    doc = submit(settings, request, owner="someone", trusted_paths=True)
    assert doc["request"]["dataset"] == str(tmp_path / "data.csv") and doc["owner"] == "someone"


# ---- finding: uploads overwrite each other, are unchecked, unbounded --------------------------
def test_uploads_get_random_keys_and_their_ids_submit(http: TestClient, settings: Settings,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    first = http.post("/automl/uploads", files={"file": ("../../same.csv", good_frame().to_csv(index=False).encode())})
    second = http.post("/automl/uploads", files={"file": ("same.csv", good_frame(60).to_csv(index=False).encode())})
    assert first.status_code == second.status_code == 200, first.text + second.text
    a, b = first.json(), second.json()
    assert a["upload_id"] != b["upload_id"] and len(a["upload_id"]) == 32
    assert a["dataset"] == f"s3://{settings.data_bucket}/datasets/uploads/{a['upload_id']}/same.csv"
    objects = ObjectStore.for_settings(settings)
    assert len(objects.list_keys(settings.data_bucket, "datasets/uploads/")) == 2  # neither overwrote the other
    by_id = http.post("/automl/jobs", json={"dataset": b["upload_id"], "target": "y", "budget_s": 10})
    assert by_id.status_code == 202, by_id.text
    assert get_job(settings, by_id.json()["job_id"])["profile"]["rows"] == 60  # the second upload's rows
    by_uri = http.post("/automl/jobs", json={"dataset": a["dataset"], "target": "y", "budget_s": 10})
    assert by_uri.status_code == 202, by_uri.text
    # nothing runs a job in the API's process: both wait, queued, for a runner
    assert [get_job(settings, answer.json()["job_id"])["status"] for answer in (by_id, by_uri)] == ["queued"] * 2


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("x.txt", b"a,y\n1,0\n", "upload a .csv or .parquet file"),
    (".csv", b"a,y\n1,0\n", "upload a .csv or .parquet file"),
    ("x.csv", b"", "empty"),
    ("x.csv", b"a,y\n" + SECRET.encode() + b",\xff\xfe\n", "not UTF-8"),
    ("x.csv", b"a,y\n", "at least one row"),
    ("x.csv", b"a,y\n1,0\n2,0,1," + SECRET.encode() + b"\n", "not a CSV file with a header and rows"),
    ("x.parquet", b"a,y\n" + SECRET.encode() + b"\n", "no PAR1 magic"),
    ("x.parquet", b"PAR1" + SECRET.encode() * 3 + b"PAR1", "Parquet footer cannot be read"),
])
def test_an_upload_that_is_not_what_its_name_says_is_a_400_and_is_not_stored(
        http: TestClient, settings: Settings, name: str, content: bytes, reason: str) -> None:
    answer = http.post("/automl/uploads", files={"file": (name, content)})
    refused(answer, 400, "file", reason)
    assert all_keys(settings) == set()


@pytest.mark.parametrize("limits", [{"automl_upload_max_bytes": 1000}])
def test_an_upload_over_the_size_limit_is_a_413_and_is_not_stored(http: TestClient, settings: Settings) -> None:
    big = good_frame(200).to_csv(index=False).encode()
    assert len(big) > 1000
    refused(http.post("/automl/uploads", files={"file": ("big.csv", big)}), 413, "limit")
    assert all_keys(settings) == set()
    small = good_frame(20).to_csv(index=False).encode()
    assert len(small) <= 1000 and http.post("/automl/uploads", files={"file": ("s.csv", small)}).status_code == 200


def test_a_parquet_upload_is_accepted(http: TestClient, settings: Settings) -> None:
    answer = http.post("/automl/uploads", files={"file": ("t.PARQUET", good_frame().to_parquet(index=False))})
    assert answer.status_code == 200 and answer.json()["dataset"].endswith("/t.parquet")


# ---- finding: no limits on columns, row width, budget -----------------------------------------
@pytest.mark.parametrize("limits", [{"automl_max_columns": 5, "automl_max_row_bytes": 2_000}])
def test_submits_over_the_column_width_and_budget_limits_are_400s_and_make_no_job(
        http: TestClient, settings: Settings) -> None:
    wide = put_csv(settings, "datasets/wide.csv", pd.DataFrame({f"{SECRET}{i}": range(30) for i in range(7)}
                                                               | {"y": [0, 1] * 15}))
    fat = put_csv(settings, "datasets/fat.csv", pd.DataFrame({"a": [SECRET * 300] * 30, "b": range(30),
                                                              "y": [0, 1] * 15}))
    fine = put_csv(settings, "datasets/fine.csv", good_frame())
    before = all_keys(settings)
    refused(http.post("/automl/jobs", json={"dataset": wide, "target": "y"}), 400, "dataset", "8 columns",
            "limit is 5", absent=("wide.csv",))
    refused(http.post("/automl/jobs", json={"dataset": fat, "target": "y"}), 400, "dataset", "rows are too wide",
            "limit is 2,000", absent=("fat.csv",))
    refused(http.post("/automl/jobs", json={"dataset": fine, "target": "y", "budget_s": 3601}), 400, "budget_s",
            "over the limit of 3600 s")
    assert job_docs(settings) == [] and all_keys(settings) == before


# ---- finding: no quota on jobs ------------------------------------------------------------------
def test_each_owner_has_its_own_quota_and_an_ended_job_frees_its_slot(settings: Settings) -> None:
    uri = put_csv(settings, "datasets/ok.csv", good_frame())
    request = JobRequest(dataset=uri, target="y", budget_s=10)
    held = [submit(settings, request, owner="alice") for _ in range(settings.automl_max_running_jobs)]
    with pytest.raises(Conflict, match="'alice' already has 2 AutoML jobs queued or running"):
        submit(settings, request, owner="alice")
    assert submit(settings, request, owner="bob")["owner"] == "bob"  # another owner's quota is its own
    assert len(job_docs(settings)) == 3
    finish(settings, held[0]["_id"], {"status": "succeeded"})
    assert "slot" not in get_job(settings, held[0]["_id"])
    assert submit(settings, request, owner="alice")["owner"] == "alice"
    with pytest.raises(Conflict):
        submit(settings, request, owner="alice")


def test_concurrent_submits_cannot_take_the_same_slot(settings: Settings) -> None:
    """The insert itself is the check (the unique owner+slot index): with one slot, of eight racing
    inserts exactly one makes a job, even past the early count."""
    one = settings.model_copy(update={"automl_max_running_jobs": 1})
    gate, made, refusals = threading.Barrier(8), [], []

    def race(n: int) -> None:
        gate.wait()
        try:
            made.append(automl_jobs._insert_holding_a_slot(one, {"_id": f"race-{n}", "status": "queued",
                                                                 "owner": "racer"}, "racer"))
        except Conflict:
            refusals.append(n)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and len(refusals) == 7 and len(job_docs(settings)) == 1


@pytest.mark.parametrize("limits", [{"automl_max_running_jobs": 1}])
def test_over_its_quota_a_submit_is_a_409_before_any_run(http: TestClient, settings: Settings) -> None:
    uri = put_csv(settings, "datasets/ok.csv", good_frame())
    one = settings.model_copy(update={"automl_max_running_jobs": 1})
    queued = submit(one, JobRequest(dataset=uri, target="y", budget_s=10), owner="local")  # the local key's name
    before = all_keys(settings)
    refused(http.post("/automl/jobs", json={"dataset": uri, "target": "y", "budget_s": 10}), 409,
            "already has 1 AutoML job queued or running")
    assert [d["_id"] for d in job_docs(settings)] == [queued["_id"]] and all_keys(settings) == before


def test_a_failed_run_frees_its_slot_and_its_error_holds_no_data(settings: Settings) -> None:
    from nimbus.automl.runner import run_job

    one = settings.model_copy(update={"automl_max_running_jobs": 1})
    uri = put_csv(settings, "datasets/gone.csv", good_frame())
    job = submit(one, JobRequest(dataset=uri, target="y", budget_s=10), owner="carol")
    ObjectStore.for_settings(settings).client.delete_object(Bucket=settings.data_bucket, Key="datasets/gone.csv")
    with pytest.raises(InvalidInput):
        run_job(one, job["_id"])  # fails in its data pass, before any Ray work
    doc = get_job(settings, job["_id"])
    assert doc["status"] == "failed" and "slot" not in doc and "gone.csv" not in doc["error"]
    put_csv(settings, "datasets/gone.csv", good_frame())
    assert submit(one, JobRequest(dataset=uri, target="y", budget_s=10), owner="carol")["status"] == "queued"


# ---- finding: `name` registers under any model ------------------------------------------------
def test_a_name_always_registers_under_automl(http: TestClient, settings: Settings,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    uri = put_csv(settings, "datasets/ok.csv", good_frame())
    accepted = http.post("/automl/jobs", json={"dataset": uri, "target": "y", "name": "churn-lr"})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    assert JobRequest.model_validate(get_job(settings, job_id)["request"]).model_name(job_id) == "automl-churn-lr"
    assert JobRequest(dataset=uri, target="y", name="automl-churn").model_name("x") == "automl-churn"
    assert JobRequest(dataset=uri, target="y").model_name("3f2a") == "automl-3f2a"
    answer = http.post("/automl/jobs", json={"dataset": uri, "target": "y", "name": "automl-"})
    assert answer.status_code == 422 and len(job_docs(settings)) == 1


def test_a_name_never_adds_a_version_to_another_owners_model(http: TestClient, settings: Settings,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import uuid

    from nimbus.automl.jobs import OWNER_TAG
    from nimbus.stores.registry import Registry

    uri = put_csv(settings, "datasets/ok.csv", good_frame())
    client = Registry.for_settings(settings).client
    theirs, untagged, ours = (f"automl-{kind}-{uuid.uuid4().hex[:8]}" for kind in ("theirs", "untagged", "ours"))
    client.create_registered_model(theirs, tags={OWNER_TAG: "someone-else"})
    client.create_registered_model(untagged)  # e.g. an older job's automl-<job id>: no owner known
    client.create_registered_model(ours, tags={OWNER_TAG: "local"})  # the route's owner: the local key's name
    for name in (theirs, untagged):
        refused(http.post("/automl/jobs", json={"dataset": uri, "target": "y", "name": name}), 409,
                "name", "registered by another owner's jobs")
    assert job_docs(settings) == []
    assert http.post("/automl/jobs", json={"dataset": uri, "target": "y", "name": ours}).status_code == 202


# ---- finding: errors and the job's answer echo values, columns, paths ------------------------
def test_refusals_name_the_problem_but_no_value_column_or_path(http: TestClient, settings: Settings) -> None:
    one_class = put_csv(settings, "datasets/one.csv", pd.DataFrame({"a": range(30), "y": [SECRET] * 30}))
    single = put_csv(settings, "datasets/single.csv", pd.DataFrame({"a": range(30), "y": ["n"] * 29 + [SECRET]}))
    columns = put_csv(settings, "datasets/cols.csv", pd.DataFrame({f"{SECRET}_col": range(30), "y": [0, 1] * 15}))
    ragged = put(settings, "datasets/ragged.csv", b"a,y\n1,0\n2,1," + SECRET.encode() + b"\n")
    missing = f"s3://{settings.data_bucket}/datasets/none-{SECRET}.csv"
    before = all_keys(settings)
    cases = [({"dataset": one_class, "target": "y"}, "has one class"),
             ({"dataset": single, "target": "y"}, "has a single row"),
             ({"dataset": columns, "target": "label"}, "target column 'label' is not in the dataset"),
             ({"dataset": ragged, "target": "y"}, "cannot be read as CSV or Parquet"),
             ({"dataset": missing, "target": "y"}, "does not exist")]
    for body, reason in cases:
        refused(http.post("/automl/jobs", json={**body, "budget_s": 10}), 400, reason,
                absent=("datasets/", ".csv"))
    assert job_docs(settings) == [] and all_keys(settings) == before


def test_a_jobs_answer_has_aggregates_not_class_counts_nor_local_paths(http: TestClient, settings: Settings,
                                                                       tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": range(40), "y": ["plain"] * 20 + [SECRET] * 20})
    frame.to_csv(tmp_path / "cli.csv", index=False)
    job = submit(settings, JobRequest(dataset=str(tmp_path / "cli.csv"), target="y", budget_s=10),
                 owner="dave", trusted_paths=True)  # a CLI job, followed over HTTP
    update(settings, job["_id"], {"data": {"rows": 40, "training_rows": 32, "class_counts": {"plain": 20, SECRET: 20}},
                                  "status": "failed", "error": public_error(ValueError(f"unseen label {SECRET!r}"))})
    answer = http.get(f"/automl/jobs/{job['_id']}")
    assert answer.status_code == 200
    body = answer.json()
    assert body["data"]["rows"] == 40 and body["data"]["classes"] == 2 and "class_counts" not in body["data"]
    assert body["request"]["dataset"] == "(a local file)" and "ValueError" in body["error"]
    assert SECRET not in answer.text and str(tmp_path) not in answer.text
    assert get_job(settings, job["_id"])["data"]["class_counts"][SECRET] == 20  # the stored record keeps them


def test_the_first_job_to_register_a_name_tags_it_with_its_owner(settings: Settings) -> None:
    import uuid

    from nimbus.automl.jobs import OWNER_TAG, check_model_owner, claim_model
    from nimbus.stores.registry import Registry

    registry = Registry.for_settings(settings)
    name = f"automl-claimed-{uuid.uuid4().hex[:8]}"
    check_model_owner(settings, name, "erin")  # a new name: anyone's
    registry.client.create_registered_model(name)  # what the job's first registration does
    claim_model(settings, name, "erin")
    claim_model(settings, name, "frank")  # a later job never takes it over
    assert registry.model_tag(name, OWNER_TAG) == "erin"
    check_model_owner(settings, name, "erin")
    with pytest.raises(Conflict, match="registered by another owner's jobs"):
        check_model_owner(settings, name, "frank")


def test_a_key_reads_only_its_own_jobs_and_admin_reads_all(settings: Settings) -> None:
    from nimbus.apikeys import ApiKey

    (alice, alice_entry), (bob, bob_entry) = ApiKey.create("alice", ["automl"]), ApiKey.create("bob", ["automl"])
    (ops, ops_entry) = ApiKey.create("ops", ["admin"])
    keyed = settings.model_copy(update={"api_keys": [alice_entry, bob_entry, ops_entry]})
    uri = put_csv(settings, "datasets/owned.csv", good_frame())
    job = submit(keyed, JobRequest(dataset=uri, target="y", budget_s=10), owner="alice")  # queued, not run
    app = create_automl_app()
    app.dependency_overrides[get_settings] = lambda: keyed
    with TestClient(app) as client:
        assert client.get(f"/automl/jobs/{job['_id']}", headers={"X-API-Key": alice}).status_code == 200
        other = client.get(f"/automl/jobs/{job['_id']}", headers={"X-API-Key": bob})
        assert other.status_code == 404 and other.json() == {"detail": f"no AutoML job {job['_id']!r}"}
        assert client.post("/automl/compare", json={"jobs": [job["_id"]]},
                           headers={"X-API-Key": bob}).status_code == 404
        assert client.get(f"/automl/jobs/{job['_id']}", headers={"X-API-Key": ops}).status_code == 200
        assert client.get(f"/automl/jobs/{job['_id']}").status_code == 401
    assert get_job(settings, job["_id"])["owner"] == "alice"
