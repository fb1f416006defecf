"""nimbus.ids: the id character set and signed request ids; the checks POST /events makes
beyond its model; the rollup's split of storable and unstorable log rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from nimbus.config import Settings
from nimbus.experiments.outcomes import attributable
from nimbus.experiments.service import _log_docs
from nimbus.ids import REQUEST_ID_LEN, RequestSigner, is_id
from nimbus.recommend.realtime import InteractionEvent, problems

SIGNER = RequestSigner("test-secret")
NOW = 1_800_000_000.0


@pytest.mark.parametrize("value", ["u42", "a", "A.b@c_d-e", "0" * 128, "user@example.com"])
def test_ids_in_the_character_set(value: str) -> None:
    assert is_id(value)


@pytest.mark.parametrize("value", ["", "u42:recent", "R:c", "u 1", "u/1", "u*", "0" * 129, "u\U0001F600", "é",
                                   "u\n", None, 42])
def test_ids_outside_it(value: object) -> None:
    assert not is_id(value)


def test_a_request_id_verifies_for_its_user_only() -> None:
    rid = SIGNER.issue("alice")
    assert len(rid) == REQUEST_ID_LEN and is_id(rid) and ":" not in rid
    assert SIGNER.verify(rid, "alice")
    assert not SIGNER.verify(rid, "bob")
    assert not RequestSigner("other-secret").verify(rid, "alice")
    assert SIGNER.issue("alice") != rid  # a fresh nonce each time


def test_a_tampered_or_malformed_request_id_does_not_verify() -> None:
    rid = SIGNER.issue("alice")
    nonce, sig = rid.split(".")
    flipped = "0" if sig[0] != "0" else "1"
    for bad in (f"{nonce}.{flipped}{sig[1:]}", f"{flipped}{nonce[1:]}.{sig}", f"{rid}:c", rid.upper(), rid[:-1],
                f"{nonce}{sig}", f"{sig}.{nonce}", "", None, 7):
        assert not SIGNER.verify(bad, "alice"), bad


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        RequestSigner("")


def test_the_settings_sign_with_the_request_secret() -> None:
    settings = Settings(request_secret="s3cret")
    assert RequestSigner("s3cret").verify(RequestSigner.for_settings(settings).issue("u1"), "u1")
    assert Settings().request_secret.get_secret_value() == "nimbus-local-request-secret"


def event(**fields) -> InteractionEvent:
    return InteractionEvent(**{"event_id": "e1", "user_id": "alice", "item_id": "i1", "type": "click", **fields})


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(NOW + seconds, UTC)


def test_event_times_inside_the_window_and_signed_request_ids_pass() -> None:
    s = Settings()
    events = [event(), event(timestamp=at(-s.event_max_age_s)), event(timestamp=at(s.event_max_skew_s)),
              event(request_id=SIGNER.issue("alice")), event(timestamp=at(0).replace(tzinfo=None))]
    assert problems(events, s, SIGNER, NOW) == []


def test_event_times_outside_the_window_and_forged_request_ids_are_named() -> None:
    s = Settings()
    year_9999 = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    far_west = datetime.fromisoformat("9999-12-31T23:59:59-12:00")
    events = [event(timestamp=at(-s.event_max_age_s - 1)), event(timestamp=at(s.event_max_skew_s + 1)),
              event(timestamp=year_9999), event(timestamp=far_west),
              event(request_id=SIGNER.issue("bob")), event(request_id="0" * 24 + "." + "0" * 32)]
    errors = problems(events, s, SIGNER, NOW)
    assert [e["loc"] for e in errors] == [("body", "events", i, f) for i, f in
                                          [(0, "timestamp"), (1, "timestamp"), (2, "timestamp"), (3, "timestamp"),
                                           (4, "request_id"), (5, "request_id")]]


def test_the_model_refuses_ids_that_could_name_other_keys() -> None:
    for field in ("event_id", "user_id", "item_id", "request_id"):
        with pytest.raises(ValueError, match=field):
            event(**{field: "x:c"})


def test_an_outcome_counts_only_on_a_listed_item_inside_the_window() -> None:
    served = {"user_id": "alice", "items": ["i1", "i2"], "ts": NOW}
    assert attributable(served, "alice", "i2", NOW + 10, 1800)
    assert not attributable(served, "alice", "i3", NOW + 10, 1800)  # not listed
    assert not attributable(served, "alice", "i1", NOW + 1801, 1800)  # after the window
    assert not attributable(served, "alice", "i1", NOW - 1, 1800)  # before the answer
    assert not attributable(served, "bob", "i1", NOW + 10, 1800)  # somebody else's answer
    assert not attributable(None, "alice", "i1", NOW + 10, 1800)
    assert not attributable({**served, "ts": "later"}, "alice", "i1", NOW + 10, 1800)


def test_the_rollup_splits_storable_rows_from_the_rest_with_a_reason() -> None:
    good = {"request_id": "r1", "type": "click", "ts": NOW, "experiment": "exp-1"}
    rows = [json.dumps(good).encode(), json.dumps({**good, "ts": 253402343999.0}).encode(), b"{not json", b"[1]",
            json.dumps({**good, "request_id": None}).encode(), json.dumps({**good, "type": "like"}).encode(),
            json.dumps({**good, "ts": "soon"}).encode(), json.dumps({**good, "ts": True}).encode()]
    docs, bad = _log_docs("outcomes", rows)
    assert [d["_id"] for _, d in docs] == ["r1:click"] and docs[0][1]["at"] == at(0)
    reasons = [reason for _, reason in bad]
    assert [raw for raw, _ in bad] == rows[1:]
    assert "year 10000" in reasons[0] and "JSONDecodeError" in reasons[1] and "not an object" in reasons[2]
    assert "request_id" in reasons[3] and "like" in reasons[4]
    assert "not a number" in reasons[5] and "not a number" in reasons[6]
