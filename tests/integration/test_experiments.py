"""A/B experiments through the real HTTP apps (recommend, events, experiments) against the real stores."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from nimbus import alerts
from nimbus.api.events import create_events_app
from nimbus.api.experiments import create_experiments_app
from nimbus.api.recommend import create_recommend_app
from nimbus.experiments.assignment import assign, bucket_ranges
from nimbus.experiments.exposures import intra_list_diversity
from nimbus.stores.documents import Collections, DocumentStore

pytestmark = pytest.mark.integration
KEY = {"X-API-Key": "nimbus-local-key"}
FIFTY_FIFTY = [{"name": "control", "model": "champion", "weight": 0.5},
               {"name": "treatment", "model": "challenger", "weight": 0.5}]


@pytest.fixture
def stack(live_recommender: dict) -> dict:
    """Champion = first version, challenger = second, three apps on the same stores."""
    from nimbus.recommend.models import promote_version

    settings = live_recommender["settings"]
    promote_version(settings, live_recommender["versions"][1], "challenger")
    with TestClient(create_recommend_app(settings)) as rec, TestClient(create_events_app(settings), headers=KEY) as ev, \
            TestClient(create_experiments_app(settings)) as admin:
        yield {**live_recommender, "rec": rec, "events": ev, "admin": admin}


def service(stack: dict):
    return stack["rec"].app.state.service.recommender


def start_experiment(stack: dict, variants: list[dict], name: str = "ranker-test") -> dict:
    created = stack["admin"].post("/experiments", json={"name": name, "variants": variants}, headers=KEY)
    assert created.status_code == 201, created.text
    started = stack["admin"].post(f"/experiments/{created.json()['id']}/start", headers=KEY)
    assert started.status_code == 200, started.text
    recommender = service(stack)
    recommender.live.refresh()  # as the pub/sub message would, without waiting on it
    recommender.assigner.refresh()
    return started.json()


def flush(stack: dict) -> None:
    for listener in service(stack).listeners:
        getattr(listener, "flush", lambda: None)()


def test_a_simulated_experiment_finds_the_variant_users_prefer(stack: dict) -> None:
    champion, challenger = stack["versions"]
    exp = start_experiment(stack, FIFTY_FIFTY)
    assert [v["version"] for v in exp["variants"]] == [champion, challenger]
    rng = random.Random(5)
    known = [str(u) for u in stack["features"].user_ids[:300]]
    users = known + [f"new-{i}" for i in range(700)]
    # Synthetic users: they click on an answer from the challenger's model twice as often.
    click_p = {champion: 0.15, challenger: 0.30}
    answers, events, expected = [], [], Counter()
    for n, user in enumerate(users):
        for _ in range(rng.choice((1, 2))):
            body = stack["rec"].get(f"/recommendations/{user}", params={"k": 5}).json()
            assert body["experiment"] == exp["id"]
            assert body["model_version"] == (champion if body["variant"] == "control" else challenger)
            answers.append(body)
            expected[(body["variant"], "exposures")] += 1
            if rng.random() < click_p[body["model_version"]]:
                item = body["items"][0]["item_id"]
                by_request = n % 4 != 0  # every fourth user's clicks carry no request_id: joined by user
                events.append({"event_id": f"c-{body['request_id']}", "user_id": user, "item_id": item, "type": "click",
                               **({"request_id": body["request_id"]} if by_request else {})})
                if by_request:
                    expected[(body["variant"], "clicks")] += 1
                    if rng.random() < 0.3:
                        events.append({"event_id": f"p-{body['request_id']}", "user_id": user, "item_id": item,
                                       "type": "purchase", "request_id": body["request_id"]})
                        expected[(body["variant"], "purchases")] += 1
        if n % 4 == 0:
            flush(stack)  # the user's latest answer must be recorded before their un-tagged click arrives
            user_events = [e for e in events if e["user_id"] == user and "request_id" not in e]
            # joined to the latest answer only when the clicked item is in it; one click per answer
            latest = answers[-1]
            if any(e["item_id"] in {i["item_id"] for i in latest["items"]} for e in user_events):
                expected[(latest["variant"], "clicks")] += 1
            if user_events:
                stack["events"].post("/events", json={"events": user_events}).raise_for_status()
            events = [e for e in events if e not in user_events]
    flush(stack)
    for i in range(0, len(events), 500):
        assert stack["events"].post("/events", json={"events": events[i:i + 500]}).status_code == 200
    stack["events"].post("/events", json={"events": events[:50]}).raise_for_status()  # a retried delivery

    results = stack["admin"].get(f"/experiments/{exp['id']}/results", headers=KEY).json()
    by_name = {v["name"]: v for v in results["variants"]}
    for variant in ("control", "treatment"):
        for metric in ("exposures", "clicks", "purchases"):
            assert by_name[variant][metric] == expected[(variant, metric)], (variant, metric)
    assert sum(v["users"] for v in results["variants"]) == len(users)
    assert not results["srm"]["flagged"]
    assert results["verdict"]["status"] == "winner" and results["verdict"]["winner"] == "treatment"
    ctr = by_name["treatment"]["metrics"]["ctr"]
    assert ctr["lift"] > 0.3 and ctr["chance_to_beat_control"] > 0.99
    assert ctr["ci95"][0] < ctr["rate"] < ctr["ci95"][1]

    performance = stack["admin"].get("/performance/recommendations", headers=KEY).json()
    rows = {(r["model_version"], r["variant"]): r for r in performance["by_version"]}
    assert rows[(champion, "control")]["exposures"] == expected[("control", "exposures")]
    assert rows[(challenger, "treatment")]["clicks"] == expected[("treatment", "clicks")]
    assert sum(p["exposures"] for p in performance["series"]) == len(answers)
    served = {i["item_id"] for a in answers for i in a["items"]}
    assert performance["catalogue_items"] == stack["features"].items.n_items
    assert performance["distinct_items"] == pytest.approx(len(served), rel=0.03)  # HyperLogLog
    lists = [intra_list_diversity([i["category"] for i in a["items"]]) for a in answers]
    assert performance["diversity"] == pytest.approx(sum(lists) / len(lists), rel=1e-9)

    stopped = stack["admin"].post(f"/experiments/{exp['id']}/stop", headers=KEY).json()
    assert stopped["status"] == "stopped" and stopped["stopped_at"]
    documents = DocumentStore.for_settings(stack["settings"])
    assert documents.collection(Collections.EXPOSURES).count_documents({"experiment": exp["id"]}) == len(answers)
    assert documents.collection(Collections.OUTCOMES).count_documents(
        {"experiment": exp["id"], "type": "click"}) == sum(expected[(v, "clicks")] for v in ("control", "treatment"))
    final = stack["admin"].get(f"/experiments/{exp['id']}/results", headers=KEY).json()
    assert final["source"] == "final" and final["variants"] == results["variants"]
    after = stack["rec"].get(f"/recommendations/{users[0]}")
    service(stack).assigner.refresh()
    assert stack["rec"].get(f"/recommendations/{users[0]}").json()["experiment"] is None
    assert after.status_code == 200


def test_a_planted_60_40_split_on_a_50_50_experiment_is_flagged(stack: dict) -> None:
    exp = start_experiment(stack, FIFTY_FIFTY, "srm-test")
    ranges = bucket_ranges(2, 1.0, [0.5, 0.5])
    pool = [f"p{i}" for i in range(3000)]
    control = [u for u in pool if assign(exp["seed"], u, ranges) == 0][:600]
    treatment = [u for u in pool if assign(exp["seed"], u, ranges) == 1][:400]
    for user in control + treatment:  # a broken upstream: 60% of the traffic reaches control
        assert stack["rec"].get(f"/recommendations/{user}").status_code == 200
    flush(stack)
    results = stack["admin"].get(f"/experiments/{exp['id']}/results", headers=KEY).json()
    assert results["srm"]["observed"] == [600, 400] and results["srm"]["flagged"]
    assert results["verdict"]["status"] == "insufficient_data" and "sample ratio mismatch" in results["verdict"]["reason"]

    settings = stack["settings"]  # the mismatch is an alert, resolved when the experiment stops
    alerts.evaluate(settings)
    (alert,) = [a for a in alerts.list_alerts(settings) if a["kind"] == "sample_ratio_mismatch"]
    assert (alert["subject"], alert["state"], alert["severity"]) == (f"experiment:{exp['id']}", "firing", "critical")
    assert "[600, 400]" in alert["summary"]
    assert stack["admin"].post(f"/experiments/{exp['id']}/stop", headers=KEY).status_code == 200
    alerts.evaluate(settings)
    (alert,) = [a for a in alerts.list_alerts(settings) if a["kind"] == "sample_ratio_mismatch"]
    assert alert["state"] == "resolved" and alert["resolved_at"]


def test_bad_requests_get_clear_4xx(stack: dict) -> None:
    admin = stack["admin"]
    assert admin.get("/experiments").status_code == 401
    assert admin.get("/experiments", headers={"X-API-Key": "wrong"}).status_code == 401
    missing = admin.get("/experiments/exp-0000000000/results", headers=KEY)
    assert missing.status_code == 404 and "exp-0000000000" in missing.json()["detail"]
    assert admin.post("/experiments/exp-0000000000/start", headers=KEY).status_code == 404
    bad = admin.post("/experiments", headers=KEY, json={"name": "w", "variants": [
        {"name": "a", "model": "champion", "weight": 0.5}, {"name": "b", "model": "challenger", "weight": 0.4}]})
    assert bad.status_code == 422
    [error] = bad.json()["detail"]
    assert error["loc"] == ["body", "variants"] and "sum to 1" in error["msg"]
    unknown = admin.post("/experiments", headers=KEY, json={"name": "u", "variants": [
        {"name": "a", "model": "champion", "weight": 0.5}, {"name": "b", "model": "nosuchalias", "weight": 0.5}]})
    assert unknown.status_code == 400 and "nosuchalias" in unknown.json()["detail"]
    first = start_experiment(stack, FIFTY_FIFTY, "first")
    second = admin.post("/experiments", headers=KEY, json={"name": "second", "variants": FIFTY_FIFTY}).json()
    clash = admin.post(f"/experiments/{second['id']}/start", headers=KEY)
    assert clash.status_code == 409 and first["id"] in clash.json()["detail"]
    again = admin.post(f"/experiments/{first['id']}/start", headers=KEY)
    assert again.status_code == 409 and "running" in again.json()["detail"]
    assert admin.post(f"/experiments/{second['id']}/stop", headers=KEY).status_code == 409
    listed = admin.get("/experiments", headers=KEY).json()
    assert [e["name"] for e in listed] == ["second", "first"]


def test_a_version_variant_is_served_live_under_its_own_alias(stack: dict) -> None:
    champion, challenger = stack["versions"]
    exp = start_experiment(stack, [{"name": "control", "model": "champion", "weight": 0.5},
                                   {"name": "pinned", "model": challenger, "weight": 0.5}], "pinned")
    assert service(stack).live.state.models[f"v{challenger}"].version == challenger
    seen = {}
    for i in range(40):
        body = stack["rec"].get(f"/recommendations/u-{i}").json()
        seen[body["variant"]] = body["model_version"]
    assert seen == {"control": champion, "pinned": challenger}
    assert exp["variants"][1]["version"] == challenger


def test_the_cli_lists_and_reports_and_words_errors_without_a_traceback(stack: dict, monkeypatch) -> None:
    from nimbus import cli

    exp = start_experiment(stack, FIFTY_FIFTY, "cli-test")
    runner = CliRunner()
    listed = runner.invoke(cli.app, ["experiments", "list"], env={"COLUMNS": "250"})
    assert listed.exit_code == 0 and exp["id"] in listed.output and "running" in listed.output
    shown = runner.invoke(cli.app, ["experiments", "results", exp["id"]], env={"COLUMNS": "250"})
    assert shown.exit_code == 0 and "verdict: insufficient_data" in shown.output
    bad = runner.invoke(cli.app, ["experiments", "create", "x", "-v", "a=champion:0.5", "-v", "b=challenger:0.4"])
    assert isinstance(bad.exception, Exception) and "sum to 1" in str(bad.exception)
    assert "variants" in str(bad.exception)
