"""The predict function through its real app and the real registry: signature checks, answers equal to
the estimators' own, a pyfunc model served and batch-scored, and a live swap under concurrent requests."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import cloudpickle
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from nimbus import governance
from nimbus.api.predict import create_predict_app
from nimbus.batch.examples import FEATURES, make_records
from nimbus.batch.job import RunRequest, run_batch
from nimbus.config import Settings, get_settings
from nimbus.stores.registry import Registry
from tests.integration.test_batch import drop, results_table

pytestmark = pytest.mark.integration
KEY = {"X-API-Key": "nimbus-local-key"}  # the local stack's key (admin: every scope)


class Doubler(mlflow.pyfunc.PythonModel):
    """A non-scikit-learn model: 2 * f0 + f1 (served and scored through mlflow.pyfunc)."""

    def predict(self, context, model_input, params=None):  # MLflow calls it so
        return 2.0 * model_input["f0"].to_numpy() + model_input["f1"].to_numpy()


def churn_frame(n: int, seed: int) -> pd.DataFrame:
    table, _ = make_records(n, seed=seed)
    return table.select(FEATURES).to_pandas().astype(np.float64)


def flats(n: int, seed: int) -> pd.DataFrame:
    """A regressor's inputs: two numbers and a category (so it is served by the estimator itself)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"size": rng.normal(50, 10, n), "rooms": rng.integers(1, 6, n).astype(np.int64),
                         "city": rng.choice(["paris", "lyon", "nice"], n)})


@pytest.fixture(scope="session")
def predict_models(stack_settings: Settings, churn_models: dict[str, str]) -> dict[str, str]:
    """A regressor, a pyfunc model and two versions of a classifier that disagree (for the swap)."""
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    registry = Registry.for_settings(stack_settings)
    versions = dict(churn_models)
    x = flats(300, seed=1)
    y = 3 * x["size"] + 10 * x["rooms"] + x["city"].map({"paris": 100, "lyon": 40, "nice": 60})
    rent = make_pipeline(make_column_transformer((OneHotEncoder(), ["city"]), remainder=StandardScaler()),
                         Ridge()).fit(x, y)
    with registry.tracked_run("nimbus-predict-tests", "rent") as run:
        versions["pred-rent"] = run.log_sklearn(rent, x.head(5), rent.predict(x.head(5)), "pred-rent")
    # A user's model class travels with the model (by value), as it would from a notebook: Spark's workers
    # cannot import this test module.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with registry.tracked_run("nimbus-predict-tests", "doubler") as run:
        example = churn_frame(5, seed=2)[["f0", "f1"]]
        versions["pred-doubler"] = run.log_pyfunc(Doubler(), example, Doubler().predict(None, example), "pred-doubler")
    xs = churn_frame(400, seed=3)
    for flip in (False, True):  # v1 says churn where f0 > 0, v2 where f0 < 0
        model = LogisticRegression().fit(xs, (xs["f0"] > 0) != flip)
        with registry.tracked_run("nimbus-predict-tests", "swap") as run:
            versions[f"pred-swap-{int(flip) + 1}"] = run.log_sklearn(model, xs.head(5), model.predict_proba(xs.head(5)),
                                                                     "pred-swap", predict_fn="predict_proba")
    return versions


@pytest.fixture
def stack(batch_stack: Settings, predict_models: dict[str, str]) -> Settings:
    """Every test model's champion moved through the audited path (the stack was cleaned)."""
    for name in ("pred-rent", "pred-doubler"):
        governance.move_alias(batch_stack, name, "champion", predict_models[name], force=True, reason="test")
    governance.move_alias(batch_stack, "pred-swap", "champion", predict_models["pred-swap-1"], force=True,
                          reason="test")
    return batch_stack


@pytest.fixture
def client(stack: Settings) -> Iterator[TestClient]:
    with TestClient(create_predict_app(stack.model_copy(update={"predict_max_records": 50}))) as client:
        yield client


def post(client: TestClient, model: str, body: object, query: str = "") -> dict:
    answer = client.post(f"/predict/{model}{query}", json=body, headers=KEY)
    assert answer.status_code == 200, answer.text
    return answer.json()


def records(frame: pd.DataFrame) -> list[dict]:
    return frame.to_dict("records")


def test_a_classifier_answers_its_estimators_own_probabilities(client: TestClient, stack: Settings,
                                                               churn_models: dict[str, str]) -> None:
    x = churn_frame(7, seed=11)
    registry = Registry.for_settings(stack)
    for name, form in (("churn-lr", "folded-linear"), ("churn-hgb", "sklearn")):
        answer = post(client, name, records(x))
        expected = registry.load_sklearn(name, churn_models[name]).predict_proba(x)
        assert (answer["model"], answer["version"], answer["alias"]) == (name, churn_models[name], "champion")
        assert answer["kind"] == "classifier" and answer["form"] == form and answer["classes"] == [0, 1]
        assert answer["request_id"]
        got = np.array([[p["probabilities"]["0"], p["probabilities"]["1"]] for p in answer["predictions"]])
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
        assert [p["label"] for p in answer["predictions"]] == expected.argmax(axis=1).tolist()


def test_one_record_is_answered_as_a_list_of_one(client: TestClient, churn_models: dict[str, str]) -> None:
    answer = post(client, "churn-lr", records(churn_frame(1, seed=12))[0], f"?version={churn_models['churn-lr']}")
    assert len(answer["predictions"]) == 1 and answer["alias"] is None and answer["version"] == churn_models["churn-lr"]


def test_a_regressor_answers_its_estimators_own_predictions(client: TestClient, stack: Settings,
                                                           predict_models: dict[str, str]) -> None:
    x = flats(9, seed=13)
    answer = post(client, "pred-rent", records(x))
    expected = Registry.for_settings(stack).load_sklearn("pred-rent", predict_models["pred-rent"]).predict(x)
    assert answer["kind"] == "regressor" and answer["form"] == "sklearn" and answer["classes"] is None
    np.testing.assert_allclose([p["value"] for p in answer["predictions"]], expected, rtol=1e-12)


@pytest.mark.parametrize(("change", "loc", "words"), [
    (lambda r: r.pop("rooms"), "rooms", "missing column rooms (long)"),
    (lambda r: r.update(garden=True), "garden", "unknown column garden"),
    (lambda r: r.update(rooms="three"), "rooms", "expected long, got str"),
    (lambda r: r.update(size=None), "size", "null, but size is required"),
    (lambda r: r.update(rooms=2.5), "rooms", "expected long, got float"),
])
def test_a_record_that_does_not_fit_the_signature_is_a_422_naming_the_column(client: TestClient, change, loc: str,
                                                                               words: str) -> None:
    good, bad = records(flats(2, seed=14))
    change(bad)
    answer = client.post("/predict/pred-rent", json=[good, bad], headers=KEY)
    assert answer.status_code == 422
    [error] = answer.json()["detail"]
    assert error["loc"] == ["body", 1, loc] and words in error["msg"]


def test_a_body_that_is_not_records_or_over_the_limit_is_a_422(client: TestClient) -> None:
    many = records(flats(51, seed=15))
    answer = client.post("/predict/pred-rent", json=many, headers=KEY)
    assert answer.status_code == 422 and "51 records; at most 50" in answer.json()["detail"][0]["msg"]
    assert client.post("/predict/pred-rent", json=many[:50], headers=KEY).status_code == 200
    for body in ([], "text", [1]):
        assert client.post("/predict/pred-rent", json=body, headers=KEY).status_code == 422
    answer = client.post("/predict/pred-rent", content=b"{not json", headers=KEY)
    assert answer.status_code == 422 and answer.json()["detail"][0]["type"] == "json_invalid"


def test_unknown_models_aliases_and_versions_are_404s(client: TestClient) -> None:
    body = records(flats(1, seed=16))
    for path in ("/predict/no-such-model", "/predict/pred-rent?alias=nope", "/predict/pred-rent?version=999"):
        answer = client.post(path, json=body, headers=KEY)
        assert answer.status_code == 404, (path, answer.text)
    assert client.post("/predict/pred-rent?alias=champion&version=1", json=body, headers=KEY).status_code == 400
    assert client.post("/predict/pred-rent", json=body).status_code == 401


def test_a_version_no_audited_promotion_vouches_for_is_refused(client: TestClient,
                                                               predict_models: dict[str, str]) -> None:
    never = predict_models["pred-swap-2"]  # registered, never promoted on this (cleaned) trail
    answer = client.post(f"/predict/pred-swap?version={never}", json=records(churn_frame(1, seed=17)), headers=KEY)
    assert answer.status_code == 409 and "never promoted through the audited path" in answer.json()["detail"]


def test_a_pyfunc_model_is_served(client: TestClient, predict_models: dict[str, str]) -> None:
    x = churn_frame(4, seed=18)[["f0", "f1"]]
    answer = post(client, "pred-doubler", records(x))
    assert answer["kind"] == "pyfunc" and answer["form"] == "pyfunc" and answer["version"] == predict_models["pred-doubler"]
    np.testing.assert_allclose([p["value"] for p in answer["predictions"]], 2 * x["f0"] + x["f1"], rtol=1e-12)


def test_a_pyfunc_model_is_batch_scored(stack: Settings, predict_models: dict[str, str]) -> None:
    uri = drop(stack, "pyfunc.parquet", 500, seed=19)
    result = run_batch(stack, RunRequest(uri, "pred-doubler@champion,churn-lr"))
    assert result.status == "succeeded" and result.scored == 500
    table = results_table(stack, f"batch/results/{result.run_key}").to_pandas().set_index("record_id")
    inputs, _ = make_records(500, seed=19)
    x = inputs.to_pandas().set_index("record_id").loc[table.index]
    np.testing.assert_allclose(table["score__pred-doubler"], 2 * x["f0"].astype(np.float64) + x["f1"], rtol=1e-6)
    assert set(table["version__pred-doubler"]) == {predict_models["pred-doubler"]}


def test_an_alias_moved_under_concurrent_requests_swaps_without_an_error(client: TestClient, stack: Settings,
                                                                         predict_models: dict[str, str]) -> None:
    one, two = predict_models["pred-swap-1"], predict_models["pred-swap-2"]
    body = [{**{f: 0.0 for f in FEATURES}, "f0": 3.0}]  # v1: churn (True); v2: no churn (False)
    assert post(client, "pred-swap", body)["version"] == one
    seen: list[tuple[int, str | None, object]] = []
    stop = threading.Event()

    def send() -> None:
        while not stop.is_set():
            answer = client.post("/predict/pred-swap", json=body, headers=KEY)
            data = answer.json() if answer.status_code == 200 else {}
            seen.append((answer.status_code, data.get("version"),
                         data["predictions"][0]["label"] if data else answer.text))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        while len(seen) < 20:
            stop.wait(0.01)
        governance.promote(stack, "pred-swap", two, reason="test: swap under load")
        for _ in range(1000):  # the announcement arrives in milliseconds; the poll (5 s) bounds a missed one
            if any(v == two for _, v, _ in seen[-4:]):
                break
            stop.wait(0.02)
        count = len(seen)
        while len(seen) < count + 20:
            stop.wait(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert {status for status, _, _ in seen} == {200}
    assert {(v, label) for _, v, label in seen} == {(one, True), (two, False)}
    first_two = next(i for i, (_, v, _) in enumerate(seen) if v == two)
    assert all(v == two for _, v, _ in seen[first_two + 4:])  # once swapped, only the new version answers
    health = client.get("/predict/health", headers=KEY).json()
    assert {"model": "pred-swap", "at": "champion", "version": two, "kind": "classifier",
            "form": "folded-linear"} in health["models"]
    assert health["swaps"] >= 1 and health["last_error"] is None


def test_the_fast_path_answers_as_the_fastapi_route_does(client: TestClient, stack: Settings) -> None:
    from nimbus.apikeys import ApiKey

    body = records(churn_frame(3, seed=20))
    fast = post(client, "churn-hgb", body, "?alias=champion")
    assert client.app.state.service.models.state  # loaded: the next answer comes from the fast path
    fast_again = post(client, "churn-hgb", body, "?alias=champion")
    (events_key, stored) = ApiKey.create("events-holder", ["events"])
    keyed = stack.model_copy(update={"api_keys": [*stack.api_keys, stored]})

    def app(**options: bool) -> FastAPI:  # the keys are the settings' of the route's dependency, as in test_auth
        built = create_predict_app(keyed, **options)
        built.dependency_overrides[get_settings] = lambda: keyed
        return built

    with TestClient(app(fast_path=False)) as plain:
        routed = post(plain, "churn-hgb", body, "?alias=champion")
        assert plain.post("/predict/churn-hgb", json=body, headers={"X-API-Key": events_key}).status_code == 403
    with TestClient(app()) as other:
        post(other, "churn-hgb", body)  # loaded
        assert other.post("/predict/churn-hgb", json=body, headers={"X-API-Key": events_key}).status_code == 403
        assert other.post("/predict/churn-hgb", json=body, headers={"X-API-Key": "nope"}).status_code == 401
        assert other.post("/predict/churn-hgb?alias=champion&k=1", json=body, headers=KEY).status_code == 400
    for answer in (fast, fast_again, routed):
        answer.pop("request_id")
    assert fast == fast_again == routed


def test_predict_answers_through_the_local_gateway(stack: Settings, churn_models: dict[str, str]) -> None:
    """The route of serverless.yml, as `nimbus local serve` serves it (an API Gateway v2 event to the handler)."""
    import httpx

    from nimbus.local.gateway import Gateway, GatewayOptions, serving
    from nimbus.local.serverless import load_project
    from tests.conftest import ROOT

    gateway = Gateway(load_project(ROOT), stack, GatewayOptions(schedules=False, watch=False))
    body = records(churn_frame(2, seed=21))
    with serving(gateway.app) as url:
        answer = httpx.post(f"{url}/predict/churn-lr?alias=champion", json=body, headers=KEY, timeout=60)
        bad = httpx.post(f"{url}/predict/churn-lr", json=[{**body[0], "f3": "x"}], headers=KEY, timeout=60)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert (data["model"], data["version"], data["alias"]) == ("churn-lr", churn_models["churn-lr"], "champion")
    assert data["request_id"] == answer.headers["x-request-id"] and len(data["predictions"]) == 2
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", 0, "f3"]
