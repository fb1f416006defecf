"""The dashboard's section per served model, through the real predict app, registry, Redis and MongoDB:
requests answered by predict show as the model's traffic (refused ones do not), each alias's audited
versions over time, and a running canary rollout with its guardrails after a judgement."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from nimbus import buffers, governance
from nimbus.api.dashboard import create_dashboard_app
from nimbus.api.predict import create_predict_app
from nimbus.config import Settings
from nimbus.dashboard import DashboardQuery, served_models_section
from nimbus.monitoring.traffic import ModelRollup, rollup_for
from nimbus.serving import rollout
from tests.classifiers import register_versions

pytestmark = pytest.mark.integration
KEY = {"X-API-Key": "nimbus-local-key"}
MODEL = "dash-churn"


@pytest.fixture(scope="session")
def dash_models(stack_settings: Settings) -> tuple[str, str]:
    """Two versions of a small classifier: the champion and a candidate."""
    champion, candidate = register_versions(stack_settings, MODEL, "nimbus-dashboard-tests", ("f0", "f1"))
    return champion, candidate


def record(i: int) -> dict[str, float]:
    return {"f0": (i % 7) / 3 - 1.0, "f1": (i % 5) / 2 - 1.0}


def test_a_served_model_shows_its_traffic_alias_versions_and_rollout_guardrails(
        clean_stack: Settings, dash_models: tuple[str, str]) -> None:
    champion, candidate = dash_models
    governance.move_alias(clean_stack, MODEL, "champion", champion, force=True, reason="first model", who="test")
    settings = clean_stack.model_copy(update={"rollout_min_requests": 10_000})  # the judge holds: guardrails stay
    with TestClient(create_predict_app(settings)) as client:
        answers = [client.post(f"/predict/{MODEL}", json=record(i), headers=KEY) for i in range(20)]
        refused = client.post(f"/predict/{MODEL}", json={"f0": 1.0}, headers=KEY)  # f1 missing: a 422
        started = rollout.start(settings, MODEL, candidate, "50%", reason="try the candidate", who="test")
        routed = []
        for i in range(2000):  # the predict process follows the rollout on its next poll or announcement
            answer = client.post(f"/predict/{MODEL}", json=record(i), headers={**KEY, "X-Routing-Key": f"u{i}"})
            answers.append(answer)
            if answer.json()["rollout"] is not None:
                routed.append(answer.json())
                if len(routed) == 40:
                    break
        buffers.flush_all()  # the model traffic and the rollout's counts, now rather than on the next tick
        decision = rollout.judge(settings, MODEL, who="test")[0]
    assert refused.status_code == 422 and {a.status_code for a in answers} == {200}
    assert decision["action"] == "hold", decision

    section = served_models_section(settings, DashboardQuery())
    [served] = [m for m in section["models"] if m["model"] == MODEL]
    assert served["requests"] == len(answers) and served["errors"] == 0 and served["error_rate"] == 0
    assert sum(point["requests"] for point in served["series"]) == len(answers)
    assert served["p50_ms"] is not None and served["p50_ms"] <= served["p99_ms"]
    assert [m["version"] for m in served["aliases"]["champion"]] == [champion]
    assert [m["version"] for m in served["aliases"]["canary"]] == [candidate]
    assert served["live"] == {"champion": champion, "canary": candidate}
    assert served["aliases"]["champion"][0]["at"] <= served["aliases"]["canary"][0]["at"]

    shown = served["rollout"]
    assert (shown["id"], shown["state"], shown["share"], shown["candidate"], shown["champion"]) == (
        started["id"], "running", 50.0, candidate, champion)
    assert {g["name"] for g in shown["guardrails"]} >= {"error_rate", "latency_p99"}
    assert {g["status"] for g in shown["guardrails"]} <= {"pass", "fail", "pending", "skipped"}
    assert any(g["status"] == "pending" for g in shown["guardrails"])  # too few candidate requests to step
    by_role = {role: sum(1 for a in routed if a["rollout"]["role"] == role) for role in ("canary", "champion")}
    assert {role: shown["counts"][role]["requests"] for role in by_role} == by_role
    assert [h["action"] for h in shown["history"]] == ["start"]

    document = TestClient(create_dashboard_app(), headers=KEY).get("/dashboard/data")
    assert document.status_code == 200, document.text
    [over_http] = [m for m in document.json()["served_models"]["models"] if m["model"] == MODEL]
    assert over_http["requests"] == len(answers) and over_http["aliases"]["canary"][0]["from"] is None
    assert over_http["rollout"]["guardrails"] == shown["guardrails"]


def test_a_model_failure_counts_as_an_error_of_that_model(clean_stack: Settings) -> None:
    rollup = rollup_for(clean_stack, ModelRollup)
    for latency_ms, error in ((2.0, False), (3.0, False), (40.0, True)):
        rollup.add("m-errors", latency_ms, error)
    rollup.add("m-other", 1.0, False)
    assert rollup.flush() == 2  # one row per model in this bucket
    section = served_models_section(clean_stack, DashboardQuery())
    models = {m["model"]: m for m in section["models"]}
    assert set(models) == {"m-errors", "m-other"}
    assert (models["m-errors"]["requests"], models["m-errors"]["errors"]) == (3, 1)
    assert models["m-errors"]["error_rate"] == pytest.approx(1 / 3)
    assert 30.0 <= models["m-errors"]["p99_ms"] <= 50.0  # inside the 30-50 ms histogram bucket
    assert models["m-other"]["rollout"] is None and models["m-other"]["aliases"] == {}


def test_the_openapi_example_is_a_valid_served_models_section(stack_settings: Settings) -> None:
    from nimbus.api.dashboard import EXAMPLE, DashboardData

    document = DashboardData.model_validate(EXAMPLE)  # the documented example fits the documented models
    [model] = document.served_models.models
    assert model.rollout is not None and {g.status for g in model.rollout.guardrails} == {"pass", "pending", "skipped"}
    spec = TestClient(create_dashboard_app()).get("/dashboard/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"ServedModels", "ServedModel", "RolloutView", "Guardrail", "AliasMove"} <= set(schemas)
    assert set(schemas["Guardrail"]["properties"]["status"]["enum"]) == {"pass", "fail", "pending", "skipped"}
    assert "from" in schemas["AliasMove"]["properties"]
