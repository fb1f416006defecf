"""Canary rollouts through the real predict app, registry, Redis and MongoDB: a candidate that errors on a
category is rolled back by itself, a good one steps 10% -> 50% -> 100% and becomes champion; requests keep
flowing through every step and none fails; each step is on the audit trail with its reason."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from nimbus import audit, governance
from nimbus.api.predict import create_predict_app
from nimbus.config import Settings
from nimbus.errors import Conflict, InvalidInput, NotFound
from nimbus.serving import rollout
from nimbus.stores.registry import Registry

pytestmark = pytest.mark.integration
KEY = {"X-API-Key": "nimbus-local-key"}
MODEL = "ro-churn"
PLANS = ["basic", "pro"]


def frame(n: int, seed: int, plans: list[str] = PLANS) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"f0": rng.normal(0, 1, n), "f1": rng.normal(0, 1, n), "plan": rng.choice(plans, n)})


@pytest.fixture(scope="session")
def rollout_models(stack_settings: Settings) -> dict[str, str]:
    """v1 the champion; v2 a good candidate; v3 one that fails on a plan it never saw (``team``); v4 one trained
    on a stale table (``f0`` moved by 2), with its training reference logged as AutoML and the examples do."""
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    x = frame(600, seed=1)
    y = (x["f0"] + (x["plan"] == "pro") - 0.5 > 0).astype(int)
    registry = Registry.for_settings(stack_settings)
    versions = {}
    from nimbus.monitoring.drift import REFERENCE_PATH
    from nimbus.serving.samples import training_reference

    stale = x.assign(f0=x["f0"] + 2.0)
    for label, unknown, c, data in (("champion", "ignore", 1.0, x), ("good", "ignore", 0.5, x),
                                    ("bad", "error", 1.0, x), ("stale", "ignore", 1.0, stale)):
        model = make_pipeline(make_column_transformer((OneHotEncoder(handle_unknown=unknown), ["plan"]),
                                                      remainder="passthrough"), LogisticRegression(C=c)).fit(data, y)
        with registry.tracked_run("nimbus-rollout-tests", label) as run:
            versions[label] = run.log_sklearn(model, data.head(5), model.predict_proba(data.head(5)), MODEL,
                                              predict_fn="predict_proba")
            if label == "stale":
                run.log_json(training_reference(model, data), REFERENCE_PATH)
    return versions


@pytest.fixture
def stack(clean_stack: Settings, rollout_models: dict[str, str]) -> Settings:
    governance.move_alias(clean_stack, MODEL, "champion", rollout_models["champion"], force=True, reason="test")
    return clean_stack.model_copy(update={"rollout_min_requests": 40, "rollout_min_step_s": 60.0,
                                          "rollout_fail_fast_errors": 5, "traffic_flush_s": 0.2})


class Traffic:
    """Requests from many users in threads, through the real app, for as long as the test runs."""

    def __init__(self, client: TestClient, plans: list[str]) -> None:
        self.client, self.plans = client, plans
        self.seen: list[tuple[int, str, dict]] = []  # (status, user, answer)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, args=(i,)) for i in range(3)]

    def _send(self, worker: int) -> None:
        rng = np.random.default_rng(worker)
        while not self._stop.is_set():
            user = f"user-{rng.integers(0, 400)}"
            record = {"f0": float(rng.normal()), "f1": float(rng.normal()), "plan": str(rng.choice(self.plans))}
            answer = self.client.post(f"/predict/{MODEL}", json=record, headers={**KEY, "X-Routing-Key": user})
            self.seen.append((answer.status_code, user, answer.json() if answer.status_code == 200 else
                              {"error": answer.text}))

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def wait(self, more: int) -> None:
        count = len(self.seen)
        while len(self.seen) < count + more:
            self._stop.wait(0.01)

    def wait_for(self, check, tries: int = 3000) -> dict:
        """The first answer from now on that ``check`` accepts (bounded by a number of tries, not a clock)."""
        start = len(self.seen)
        for _ in range(tries):
            for _, _, answer in self.seen[start:]:
                if "model" in answer and check(answer):
                    return answer
            self._stop.wait(0.01)
        raise AssertionError(f"no answer like that in {len(self.seen) - start} answers")


def judge_until(settings: Settings, traffic: Traffic, clock, wanted: set[str], rounds: int = 400) -> dict:
    """Judge (with the test's clock) until a decision in ``wanted``; counts reach Redis within a flush."""
    for _ in range(rounds):
        traffic.wait(10)
        decision = rollout.judge(settings, MODEL, who="test", clock=clock)[0]
        if decision["action"] in wanted:
            return decision
        assert decision["action"] == "hold", decision
    raise AssertionError(f"no {wanted} decision after {rounds} judgements: {decision}")


@pytest.fixture
def client(stack: Settings) -> Iterator[TestClient]:
    with TestClient(create_predict_app(stack)) as client:
        yield client


def test_a_candidate_that_errors_on_a_category_is_rolled_back_by_itself(
        client: TestClient, stack: Settings, rollout_models: dict[str, str]) -> None:
    champion, bad = rollout_models["champion"], rollout_models["bad"]
    with Traffic(client, [*PLANS, "team"]) as traffic:
        traffic.wait(20)
        started = rollout.start(stack, MODEL, bad, "10%", who="test")
        assert (started["state"], started["steps"], started["share"]) == ("running", [10, 50, 100], 10)
        traffic.wait_for(lambda a: a["rollout"] is not None)  # the predict process follows the rollout
        decision = judge_until(stack, traffic, lambda: datetime.now(UTC), {"rollback", "step", "complete"})
        traffic.wait(20)
    assert decision["action"] == "rollback" and decision["state"] == "rolled_back"
    assert "error_rate failed" in decision["reason"]
    assert {s for s, _, _ in traffic.seen} == {200}, [a for s, _, a in traffic.seen if s != 200][:3]
    # the candidate never answered a plan it cannot score: the champion stood in, its version in the answer
    assert all(a["version"] == champion for _, _, a in traffic.seen if a.get("rollout") and
               a["rollout"]["role"] == "champion")
    registry = Registry.for_settings(stack)
    assert registry.alias(MODEL, "champion").version == champion
    assert registry.alias(MODEL, "canary").version == champion  # no traffic to the candidate any more
    moves = [(r["action"], r["details"].get("to")) for r in reversed(audit.history(stack, f"model:{MODEL}", limit=None))]
    assert ("rollout_start", bad) in moves and moves[-1] == ("rollout_rollback", champion)
    record = audit.history(stack, f"model:{MODEL}", action="rollout_rollback")[0]
    assert "error_rate failed" in record["details"]["reason"]
    status = rollout.status(stack, MODEL)
    assert status["state"] == "rolled_back" and [h["action"] for h in status["history"]] == ["start", "rollback"]
    assert next(g for g in status["guardrails"] if g["name"] == "error_rate")["status"] == "fail"


def test_a_candidate_trained_on_a_stale_table_is_rolled_back_by_its_input_psi(
        client: TestClient, stack: Settings, rollout_models: dict[str, str]) -> None:
    champion, stale = rollout_models["champion"], rollout_models["stale"]
    quick = stack.model_copy(update={"rollout_min_step_s": 0.0, "drift_min_samples": 40})
    with Traffic(client, PLANS) as traffic:
        traffic.wait(20)
        rollout.start(quick, MODEL, stale, "50%", who="test")
        traffic.wait_for(lambda a: a["rollout"] is not None)
        decision = judge_until(quick, traffic, lambda: datetime.now(UTC), {"rollback", "step", "complete"})
    assert decision["action"] == "rollback", [g["detail"] for g in decision["guardrails"]]
    guards = {g["name"]: g for g in decision["guardrails"]}
    assert guards["input_psi"]["status"] == "fail" and "f0" in guards["input_psi"]["detail"]
    assert guards["error_rate"]["status"] != "fail"  # it answered every request: only its inputs tell
    assert {s for s, _, _ in traffic.seen} == {200}
    assert Registry.for_settings(stack).alias(MODEL, "canary").version == champion
    assert "input_psi failed" in audit.history(stack, f"model:{MODEL}", action="rollout_rollback")[0]["details"]["reason"]


def test_a_good_candidate_steps_up_to_100_percent_and_becomes_champion(
        client: TestClient, stack: Settings, rollout_models: dict[str, str]) -> None:
    champion, good = rollout_models["champion"], rollout_models["good"]
    now = datetime.now(UTC)
    clock = [now]  # the test's clock: each step has to last rollout_min_step_s (60 s) of it
    with Traffic(client, PLANS) as traffic:
        traffic.wait(20)
        rollout.start(stack, MODEL, good, "10%", who="test", clock=lambda: clock[0])
        traffic.wait_for(lambda a: a["rollout"] is not None)
        traffic.wait(60)
        held = rollout.judge(stack, MODEL, who="test", clock=lambda: clock[0])[0]
        assert held["action"] == "hold" and "step running 0/60 s" in held["reason"]
        clock[0] = now + timedelta(seconds=61)
        stepped = judge_until(stack, traffic, lambda: clock[0], {"step", "rollback", "complete"})
        assert stepped["action"] == "step" and stepped["share"] == 50, stepped
        assert rollout.status(stack, MODEL)["share"] == 50
        clock[0] = now + timedelta(seconds=122)
        done = judge_until(stack, traffic, lambda: clock[0], {"step", "rollback", "complete"})
        assert done["action"] == "complete" and done["state"] == "completed", done
        traffic.wait_for(lambda a: a["rollout"] is None and a["version"] == good)
        traffic.wait(20)
    assert {s for s, _, _ in traffic.seen} == {200}, [a for s, _, a in traffic.seen if s != 200][:3]
    assert Registry.for_settings(stack).alias(MODEL, "champion").version == good
    routed = [(u, a["version"]) for _, u, a in traffic.seen if a.get("rollout") and a["rollout"]["role"] == "canary"]
    assert routed and {v for _, v in routed} == {good}
    assert {a["version"] for _, _, a in traffic.seen if a.get("rollout") and a["rollout"]["role"] == "champion"} == {champion}
    trail = audit.history(stack, f"model:{MODEL}", limit=None)
    actions = [r["action"] for r in reversed(trail)]
    assert actions[-3:] == ["rollout_start", "rollout_step", "rollout_promote"]
    step = next(r for r in trail if r["action"] == "rollout_step")
    assert step["details"]["from_share"] == 10 and step["details"]["to_share"] == 50
    assert "guardrails passed at 10%" in step["details"]["reason"]
    assert {g["name"]: g["status"] for g in step["details"]["guardrails"]}["error_rate"] == "pass"
    promoted = next(r for r in trail if r["action"] == "rollout_promote")
    assert promoted["details"]["to"] == good and "promoted to champion" in promoted["details"]["reason"]
    # and the promotion is an ordinary one: a rollback returns the champion to the version before
    assert governance.rollback(stack, MODEL)["details"]["to"] == champion


def test_one_routing_key_gets_one_version_and_the_share_is_about_the_step(
        client: TestClient, stack: Settings, rollout_models: dict[str, str]) -> None:
    rollout.start(stack, MODEL, rollout_models["good"], "20", who="test")
    body = frame(1, seed=5).to_dict("records")[0]
    versions = {}
    for user in (f"u{i}" for i in range(300)):
        answers = {client.post(f"/predict/{MODEL}", json=body, headers={**KEY, "X-Routing-Key": user})
                   .json()["version"] for _ in range(2)}
        assert len(answers) == 1  # deterministic per key
        versions[user] = answers.pop()
    share = sum(v == rollout_models["good"] for v in versions.values()) / len(versions)
    assert 0.12 < share < 0.28  # the GrowthBook hash over 300 keys, 20% asked
    route = client.app.state.service.routes.state[MODEL]
    assert all((versions[u] == rollout_models["good"]) == route.takes(u) for u in versions)
    # ?version= and other aliases are never routed
    assert client.post(f"/predict/{MODEL}?version={rollout_models['champion']}", json=body,
                       headers=KEY).json()["rollout"] is None


def test_rollout_requests_that_cannot_run_are_refused_clearly(stack: Settings, rollout_models: dict[str, str]) -> None:
    with pytest.raises(InvalidInput, match="share must be above 0% and below 100%"):
        rollout.start(stack, MODEL, rollout_models["good"], "100%")
    with pytest.raises(InvalidInput, match="not a percentage"):
        rollout.start(stack, MODEL, rollout_models["good"], "ten")
    with pytest.raises(Conflict, match="already the champion"):
        rollout.start(stack, MODEL, rollout_models["champion"], "10")
    with pytest.raises(NotFound):
        rollout.start(stack, MODEL, "999", "10")
    rollout.start(stack, MODEL, rollout_models["good"], "10")
    with pytest.raises(Conflict, match="already has a rollout running"):
        rollout.start(stack, MODEL, rollout_models["bad"], "10")
    cancelled = rollout.cancel(stack, MODEL, who="test")
    assert cancelled["state"] == "cancelled"
    assert Registry.for_settings(stack).alias(MODEL, "canary").version == rollout_models["champion"]
    assert audit.history(stack, f"model:{MODEL}", limit=1)[0]["action"] == "rollout_cancel"
    with pytest.raises(NotFound, match="no rollout running"):
        rollout.cancel(stack, MODEL)


def test_the_models_api_starts_reads_judges_and_cancels_a_rollout(stack: Settings,
                                                                  rollout_models: dict[str, str]) -> None:
    from nimbus.api.models import create_models_app

    with TestClient(create_models_app(stack)) as api:
        bad = api.post(f"/models/{MODEL}/rollouts", json={"version": rollout_models["good"], "canary": "150%"},
                       headers=KEY)
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "canary"
        started = api.post(f"/models/{MODEL}/rollouts", json={"version": rollout_models["good"], "canary": "25%",
                                                              "reason": "api test"}, headers=KEY)
        assert started.status_code == 201, started.text
        doc = started.json()
        assert (doc["state"], doc["steps"], doc["reason"]) == ("running", [25, 50, 100], "api test")
        again = api.post(f"/models/{MODEL}/rollouts", json={"version": rollout_models["bad"]}, headers=KEY)
        assert again.status_code == 409 and "already has a rollout running" in again.json()["detail"]
        status = api.get(f"/models/{MODEL}/rollout", headers=KEY).json()
        assert status["id"] == doc["id"] and status["counts"]["canary"]["requests"] == 0
        judged = api.post("/models/rollouts/judge", params={"model": MODEL}, headers=KEY).json()
        assert [(d["action"], d["rollout"]) for d in judged] == [("hold", doc["id"])]
        assert {g["name"]: g["status"] for g in judged[0]["guardrails"]}["error_rate"] == "pending"
        cancelled = api.post(f"/models/{MODEL}/rollout/cancel", json={"reason": "api test done"}, headers=KEY)
        assert cancelled.json()["state"] == "cancelled"
        assert [r["id"] for r in api.get("/models/rollouts", params={"model": MODEL}, headers=KEY).json()] == [doc["id"]]
        assert api.get("/models/nope/rollout", headers=KEY).status_code == 404
