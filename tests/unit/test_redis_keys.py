"""The Redis key layouts and stored field formats, pinned by tests/data/redis_keys.json.

The expected strings were generated from the code before the Redis stores were split by
concern, so a layout can only change on purpose (and with a new key prefix)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from redis.crc import key_slot

from nimbus.stores.redis import keys
from nimbus.stores.redis.keys import Keys, OutcomeRow, ServedRow

CASES = json.loads((Path(__file__).resolve().parents[1] / "data" / "redis_keys.json").read_text())


def public_key_functions() -> set[str]:
    return {name for name, _ in inspect.getmembers(Keys, inspect.ismethod) if not name.startswith("_")}


def test_every_key_function_is_pinned() -> None:
    assert public_key_functions() == {case["fn"] for case in CASES["keys"]}


@pytest.mark.parametrize("case", CASES["keys"], ids=lambda c: f"{c['fn']}{tuple(c['args'])}")
def test_key_layout(case: dict) -> None:
    assert getattr(Keys, case["fn"])(*case["args"]) == case["key"]


@pytest.mark.parametrize("case", CASES["refused_ids"], ids=lambda c: f"{c['fn']}{tuple(c['args'])}")
def test_an_id_that_could_name_another_key_is_refused(case: dict) -> None:
    with pytest.raises(ValueError, match="not a valid id"):
        getattr(Keys, case["fn"])(*case["args"])


@pytest.mark.parametrize("group", CASES["same_slot"], ids=lambda g: g["why"].split(":")[0])
def test_keys_used_together_share_one_cluster_slot(group: dict) -> None:
    """A Redis Cluster refuses (CROSSSLOT) a script or transaction whose keys hash to different slots."""
    slots = {key_slot(getattr(Keys, fn)(*args).encode()) for fn, args in group["keys"]}
    assert len(slots) == 1


def test_users_and_experiments_spread_over_the_slots() -> None:
    """The tags are per user / per experiment, not one tag for all: a cluster shares the load out."""
    assert key_slot(Keys.rt_user("alice").encode()) != key_slot(Keys.rt_user("bob").encode())
    assert key_slot(Keys.ab_counts("exp-1").encode()) != key_slot(Keys.ab_counts("exp-2").encode())
    assert key_slot(Keys.fs_user("v-a", "alice").encode()) != key_slot(Keys.fs_user("v-a", "bob").encode())


def test_event_marks_are_per_user() -> None:
    assert Keys.rt_seen("alice", "e-1") != Keys.rt_seen("bob", "e-1")


def test_outcome_kinds_and_metrics() -> None:
    assert CASES["metric_of"] == keys.METRIC_OF
    assert ("exposures", *CASES["metric_of"].values()) == keys.METRICS


@pytest.mark.parametrize("case", CASES["served_records"], ids=lambda c: c["row"]["request_id"])
def test_served_record_encodes_and_decodes(case: dict) -> None:
    row = ServedRow(**{**case["row"], "items": tuple(case["row"]["items"])})
    assert row.record().decode() == case["record"]
    assert keys.decode_served(row.record()) == case["decoded"]


@pytest.mark.parametrize("case", CASES["perf_fields"], ids=lambda c: c["field"])
def test_perf_field_round_trips(case: dict) -> None:
    field = keys.perf_field(case["model_version"], case["variant"], case["metric"])
    assert field == case["field"]
    assert keys.parse_perf_field(field) == (case["model_version"] or "none", case["variant"] or "-", case["metric"])


def test_the_diversity_fields_are_not_perf_counts() -> None:
    assert keys.parse_perf_field(keys.DIV_SUM) is None and keys.parse_perf_field(keys.LISTS) is None


@pytest.mark.parametrize("case", CASES["ab_count_fields"], ids=lambda c: c["field"])
def test_ab_count_field(case: dict) -> None:
    assert keys.ab_count_field(case["variant"], case["metric"]) == case["field"]


@pytest.mark.parametrize("case", CASES["outcomes"], ids=lambda c: f"{c['outcome']['kind']}-{c['outcome']['joined_by']}")
def test_outcome_fields_and_log_row(case: dict) -> None:
    row = OutcomeRow(**case["outcome"])
    served = case["outcome"]["served"]
    assert keys.ab_count_field(served["variant"], row.metric) == case["ab_count_field"]
    assert keys.perf_field(served["model_version"], served["variant"], row.metric) == case["perf_field"]
    assert keys.outcome_log_row(row) == case["log_row"]
    assert json.loads(keys.outcome_log_row(row)) == case["decoded"]
