"""Issue 11, trust boundaries: A/B outcomes cannot be forged and rollups cannot be poisoned.

One regression test per finding of the security review, through the real HTTP apps
(recommend, events, experiments) and the real Redis and MongoDB; each checks the refusal
(or the outcome not counted) and reads the stores back to see that nothing was written.
The events app runs on an injected clock (``CLOCK``), never the test's wall clock.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from nimbus.api.events import create_events_app
from nimbus.api.experiments import create_experiments_app
from nimbus.api.recommend import create_recommend_app
from nimbus.experiments.service import persist
from nimbus.ids import RequestSigner
from nimbus.recommend.serving import InvalidUserId
from nimbus.stores.documents import Collections, DocumentStore
from nimbus.stores.redis.base import RedisStore
from nimbus.stores.redis.experiments import ExperimentStore
from nimbus.stores.redis.features import FeatureStore
from nimbus.stores.redis.keys import Keys

pytestmark = pytest.mark.integration
KEY = {"X-API-Key": "nimbus-local-key"}
FIFTY_FIFTY = [{"name": "control", "model": "champion", "weight": 0.5},
               {"name": "treatment", "model": "challenger", "weight": 0.5}]


class Clock:
    """The events app's time: set by the test, relative to what the stores recorded."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def stack(live_recommender: dict) -> dict:
    from nimbus.recommend.models import promote_version

    settings = live_recommender["settings"]
    promote_version(settings, live_recommender["versions"][1], "challenger")
    clock = Clock(1_800_000_000.0)
    with TestClient(create_recommend_app(settings)) as rec, \
            TestClient(create_recommend_app(settings, fast_path=False)) as slow, \
            TestClient(create_events_app(settings, clock=clock), headers=KEY) as ev, \
            TestClient(create_experiments_app(settings)) as admin:
        yield {**live_recommender, "rec": rec, "slow": slow, "events": ev, "admin": admin, "clock": clock,
               "redis": RedisStore.for_settings(settings).client, "ab": ExperimentStore.for_settings(settings),
               "docs": DocumentStore.for_settings(settings)}


def recommender(client: TestClient):
    return client.app.state.service.recommender


def start_experiment(stack: dict, name: str = "trust") -> dict:
    created = stack["admin"].post("/experiments", json={"name": name, "variants": FIFTY_FIFTY}, headers=KEY)
    assert created.status_code == 201, created.text
    started = stack["admin"].post(f"/experiments/{created.json()['id']}/start", headers=KEY)
    assert started.status_code == 200, started.text
    recommender(stack["rec"]).live.refresh()
    recommender(stack["rec"]).assigner.refresh()
    return started.json()


def serve(stack: dict, user: str) -> tuple[dict, dict]:
    """An answer for ``user`` and the server's record of it (written, as the tracker would in the background)."""
    body = stack["rec"].get(f"/recommendations/{user}", params={"k": 5}).json()
    for listener in recommender(stack["rec"]).listeners:
        getattr(listener, "flush", lambda: None)()
    [record] = stack["ab"].served_records([body["request_id"]])
    assert record is not None
    return body, record


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def keys(stack: dict, pattern: str) -> list[bytes]:
    return sorted(stack["redis"].scan_iter(match=Keys.key(pattern)))


def outcome_counts(stack: dict, exp: dict) -> dict[str, int]:
    counts = stack["ab"].experiment_counts(exp["id"], ["control", "treatment"])
    return {v: c["clicks"] + c["purchases"] for v, c in counts.items()}


def nothing_counted(stack: dict, exp: dict) -> None:
    assert outcome_counts(stack, exp) == {"control": 0, "treatment": 0}
    assert stack["redis"].llen(Keys.ab_log("outcomes")) == 0
    assert keys(stack, "mon:req:*:c") == keys(stack, "mon:req:*:p") == []


def test_a_click_counts_only_for_a_request_id_the_server_signed_for_that_user(stack: dict) -> None:
    """Finding: any request_id was accepted; ``R:c`` read request R's click mark as an answer."""
    exp = start_experiment(stack)
    body, record = serve(stack, "alice")
    bob, _ = serve(stack, "bob")
    stack["clock"].t = record["ts"] + 5
    item = body["items"][0]["item_id"]
    forged = [f"{body['request_id']}:c",  # names alice's answer's click mark
              "0" * 24 + "." + "0" * 32,  # well-formed, not signed
              RequestSigner("some-other-secret").issue("alice"),
              bob["request_id"]]  # a real answer, to somebody else
    for n, request_id in enumerate(forged):
        answer = stack["events"].post("/events", json={"events": [
            {"event_id": f"c-{n}", "user_id": "alice", "item_id": item, "type": "click", "request_id": request_id},
            {"event_id": f"v-{n}", "user_id": "carol", "item_id": item, "type": "view"}]})
        assert answer.status_code == 422, request_id
        assert [e["loc"] for e in answer.json()["detail"]] == [["body", "events", 0, "request_id"]]
    nothing_counted(stack, exp)
    assert keys(stack, "rt:*") == []  # not even carol's valid view: a refused batch applies nothing

    genuine = {"event_id": "c-ok", "user_id": "alice", "item_id": item, "type": "click",
               "request_id": body["request_id"]}
    assert stack["events"].post("/events", json={"events": [genuine]}).status_code == 200
    assert outcome_counts(stack, exp)[body["variant"]] == 1


def test_a_request_id_join_needs_an_item_of_that_answer_inside_the_attribution_window(stack: dict) -> None:
    """Finding: request-id joins skipped the item and time-window checks."""
    exp = start_experiment(stack)
    body, record = serve(stack, "alice")
    listed = [i["item_id"] for i in body["items"]]
    unlisted = next(str(i) for i in stack["features"].items.item_ids if str(i) not in listed)
    window = stack["settings"].attribution_window_s

    def click(n: int, item: str, **extra: str) -> None:
        event = {"event_id": f"c-{n}", "user_id": "alice", "item_id": item, "type": "click",
                 "request_id": body["request_id"], **extra}
        answer = stack["events"].post("/events", json={"events": [event]})
        assert answer.status_code == 200, answer.text

    stack["clock"].t = record["ts"] + window + 1  # after the window (the record itself is still in Redis)
    click(1, listed[0])
    stack["clock"].t = record["ts"] + 5
    click(2, listed[0], timestamp=iso(record["ts"] - 10))  # before the answer was served
    click(3, unlisted)  # an item the answer never listed
    nothing_counted(stack, exp)

    click(4, listed[1])
    assert outcome_counts(stack, exp) == {body["variant"]: 1, ({"control", "treatment"} - {body["variant"]}).pop(): 0}


def test_a_user_id_naming_another_key_is_a_422_and_never_opens_the_breaker(stack: dict) -> None:
    """Finding: ``GET /recommendations/u42:recent`` read a list as a hash (WRONGTYPE) and
    opened the circuit breaker for every user of the process."""
    user, other = (str(u) for u in stack["features"].user_ids[:2])
    stack["clock"].t = 1_800_000_000.0
    viewed = {"event_id": "v-1", "user_id": user, "item_id": str(stack["features"].items.item_ids[0]), "type": "view"}
    assert stack["events"].post("/events", json={"events": [viewed]}).status_code == 200
    assert stack["redis"].exists(Keys.rt_recent(user))  # the list the bad id would have named
    for client in (stack["rec"], stack["slow"]):
        for bad in (f"{user}:recent", "u%3A1", "u%201", "%F0%9F%98%80"):
            answer = client.get(f"/recommendations/{bad}")
            assert answer.status_code == 422 and "user_id" in answer.text, bad
        breaker = recommender(client).breaker
        assert breaker.failures == 0 and breaker.allow()
        body = client.get(f"/recommendations/{other}").json()
        assert body["strategy"] == "personalized" and body["degraded"] is False
    with pytest.raises(InvalidUserId, match="user_id"):
        recommender(stack["rec"]).recommend(f"{user}:recent")


def test_bad_data_under_one_users_key_degrades_that_answer_only_and_not_the_breaker(stack: dict) -> None:
    """Finding: a Redis WRONGTYPE on the request path counted as an outage."""
    victim, other = (str(u) for u in stack["features"].user_ids[:2])
    stack["redis"].set(Keys.rt_user(victim), "not a hash")
    answer = stack["rec"].get(f"/recommendations/{victim}")
    assert answer.status_code == 200 and answer.json()["degraded"] is True
    breaker = recommender(stack["rec"]).breaker
    assert breaker.failures == 0 and breaker.allow()
    body = stack["rec"].get(f"/recommendations/{other}").json()
    assert body["strategy"] == "personalized" and body["degraded"] is False


def test_event_ids_are_scoped_per_user(stack: dict) -> None:
    """Finding: one global event-id namespace let a user claim another's guessable ids in advance."""
    stack["clock"].t = 1_800_000_000.0
    item = str(stack["features"].items.item_ids[0])

    def post(user: str) -> dict:
        batch = {"events": [{"event_id": "e-2026-12-03-000001", "user_id": user, "item_id": item, "type": "view"}]}
        answer = stack["events"].post("/events", json=batch)
        assert answer.status_code == 200, answer.text
        return answer.json()

    assert post("mallory")["accepted"] == 1  # claims the id first
    assert post("alice") == {"accepted": 1, "duplicates": 0, "unknown_items": 0}
    assert post("alice")["duplicates"] == 1  # still idempotent for alice herself
    features = FeatureStore.for_settings(stack["settings"])
    assert features.realtime("alice", 10)[0]["n"] == "1" and features.realtime("mallory", 10)[0]["n"] == "1"
    assert [k.decode() for k in keys(stack, "rt:seen:*")] == [Keys.rt_seen("alice", "e-2026-12-03-000001"),
                                                              Keys.rt_seen("mallory", "e-2026-12-03-000001")]


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59-12:00", "too-old", "too-new"])
def test_an_event_time_outside_the_window_is_a_422_naming_it_and_writes_nothing(stack: dict, stamp: str) -> None:
    """Finding: a click at 9999-12-31T23:59:59-12:00 (year 10000 in UTC) passed validation and
    later broke every rollup."""
    exp = start_experiment(stack)
    body, record = serve(stack, "alice")
    now = stack["clock"].t = record["ts"] + 5
    s = stack["settings"]
    stamp = {"too-old": iso(now - s.event_max_age_s - 1), "too-new": iso(now + s.event_max_skew_s + 1)}.get(stamp, stamp)
    item = body["items"][0]["item_id"]
    batch = {"events": [{"event_id": "v-1", "user_id": "carol", "item_id": item, "type": "view"},
                        {"event_id": "c-1", "user_id": "alice", "item_id": item, "type": "click",
                         "request_id": body["request_id"], "timestamp": stamp}]}
    answer = stack["events"].post("/events", json=batch)
    assert answer.status_code == 422
    [error] = answer.json()["detail"]
    assert error["loc"] == ["body", "events", 1, "timestamp"] and "timestamp" in error["msg"]
    nothing_counted(stack, exp)
    assert keys(stack, "rt:*") == []

    for n, inside in enumerate((iso(now - s.event_max_age_s + 1), iso(now + s.event_max_skew_s - 1))):
        event = {**batch["events"][1], "event_id": f"c-inside-{n}", "timestamp": inside}
        accepted = stack["events"].post("/events", json={"events": [event]})
        assert accepted.status_code == 200, accepted.text


def test_a_row_the_rollup_cannot_store_is_quarantined_and_stop_still_stops(stack: dict) -> None:
    """Finding: one unstorable log row made every later rollup fail, and stop() then left the
    experiment running with its surface released."""
    exp = start_experiment(stack)
    body, record = serve(stack, "alice")
    stack["clock"].t = record["ts"] + 5
    click = {"event_id": "c-1", "user_id": "alice", "item_id": body["items"][0]["item_id"], "type": "click",
             "request_id": body["request_id"]}
    assert stack["events"].post("/events", json={"events": [click]}).status_code == 200
    # rows as an earlier release could log them (no time window then): year 10000, not JSON, not an object
    [genuine] = stack["ab"].peek_log("outcomes")
    year_10000 = json.dumps({**json.loads(genuine), "request_id": "r-poison", "ts": 253402343999.0})
    stack["redis"].lpush(Keys.ab_log("outcomes"), year_10000, b"{not json", b"[1, 2]")

    moved = persist(stack["settings"])
    assert moved["outcomes"] == 1 and moved["quarantined"] == 3 and moved["exposures"] == 1
    assert stack["redis"].llen(Keys.ab_log("outcomes")) == 0  # acknowledged, not retried forever
    quarantined = {d["row"]: d for d in stack["docs"].collection(Collections.AB_QUARANTINE).find()}
    assert set(quarantined) == {year_10000, "{not json", "[1, 2]"}
    assert "year 10000" in quarantined[year_10000]["reason"] and quarantined["[1, 2]"]["kind"] == "outcomes"
    assert "JSONDecodeError" in quarantined["{not json"]["reason"]
    assert stack["docs"].collection(Collections.OUTCOMES).count_documents({}) == 1
    assert persist(stack["settings"])["quarantined"] == 0  # the next rollup runs clean

    stopped = stack["admin"].post(f"/experiments/{exp['id']}/stop", headers=KEY)
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    assert "recommendations" not in stack["ab"].running_experiments()


def test_a_stop_that_cannot_persist_leaves_the_experiment_running_unchanged(stack: dict) -> None:
    """Finding: stop() released the surface, then failed in persist: neither running nor stopped."""
    exp = start_experiment(stack)
    stack["redis"].set(Keys.ab_log("outcomes"), "not a list")  # every LRANGE on it now fails (WRONGTYPE)
    failed = stack["admin"].post(f"/experiments/{exp['id']}/stop", headers=KEY)
    assert failed.status_code == 503 and "still running, unchanged" in failed.json()["detail"]
    doc = stack["docs"].collection(Collections.EXPERIMENTS).find_one({"_id": exp["id"]})
    assert doc["status"] == "running" and doc["stopped_at"] is None and "final_counts" not in doc
    assert stack["ab"].running_experiments()["recommendations"]["id"] == exp["id"]

    stack["redis"].delete(Keys.ab_log("outcomes"))

    claim = stack["ab"].running_experiments()["recommendations"]
    stack["redis"].set(Keys.ab_counts(exp["id"]), "not a hash")  # fails after the surface was released
    failed = stack["admin"].post(f"/experiments/{exp['id']}/stop", headers=KEY)
    assert failed.status_code == 503 and "still running, unchanged" in failed.json()["detail"]
    assert stack["ab"].running_experiments()["recommendations"] == claim  # the claim was put back
    assert stack["docs"].collection(Collections.EXPERIMENTS).find_one({"_id": exp["id"]})["status"] == "running"

    stack["redis"].delete(Keys.ab_counts(exp["id"]))
    stopped = stack["admin"].post(f"/experiments/{exp['id']}/stop", headers=KEY)
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    assert "recommendations" not in stack["ab"].running_experiments()
