"""The record rules against shared vectors (tests/data/validation_cases.json), compiled to Arrow."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from nimbus.validation.arrow import check
from nimbus.validation.schema import RecordSchema, SchemaMismatch, load_schema

CASES = json.loads((Path(__file__).parents[1] / "data" / "validation_cases.json").read_text())["cases"]
COLUMNS = ["record_id", "segment", "signup_date", "last_seen", *[f"f{j}" for j in range(20)]]


def as_table(records: list[dict]) -> pa.Table:
    """Text columns, as a CSV arrives; f1..f19 filled with a valid value so each case tests its own rule."""
    rows = [{c: r.get(c, "1" if c.startswith("f") and c != "f0" else None) for c in COLUMNS} for r in records]
    return pa.table({c: pa.array([row[c] for row in rows], pa.string()) for c in COLUMNS})


@pytest.mark.parametrize("case", CASES, ids=[c["record"]["record_id"] or "empty-id" for c in CASES])
def test_each_shared_case_fails_exactly_its_rules(case: dict) -> None:
    schema = load_schema("churn")
    verdict = check(as_table([case["record"]]), schema)
    failed = sorted(name for name, mask in verdict.failures.items() if mask[0])
    assert failed == sorted(case["fails"])
    assert bool(verdict.valid[0]) is (not case["fails"])


def test_every_reason_of_a_record_is_reported_in_words() -> None:
    schema = load_schema("churn")
    verdict = check(as_table([{"record_id": "bad id", "f0": "99", "segment": "martian"}]), schema)
    assert verdict.reasons(schema, schema.compiled()) == [[
        "record_id: does not match ^[A-Za-z0-9_.:-]{1,64}$",
        "segment: not one of consumer, business, enterprise",
        "f0: above maximum 50",
    ]]


def test_inputs_missing_required_columns_do_not_match() -> None:
    with pytest.raises(SchemaMismatch, match=r"missing required column.s. f3"):
        load_schema("churn").check_columns({c: "string" for c in COLUMNS if c != "f3"})


def test_a_schema_naming_unknown_columns_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown column 'nope'"):
        RecordSchema.model_validate({"name": "x", "id": "a", "columns": {"a": {"type": "string"}},
                                     "rules": [{"name": "r", "left": "a", "op": "<", "right": "nope"}]})
