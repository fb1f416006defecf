"""The Spark compiler of the record rules against the same shared vectors as the Arrow one."""

from __future__ import annotations

import pytest

from nimbus.batch.spark import spark_session
from nimbus.config import Settings
from nimbus.validation.schema import load_schema
from nimbus.validation.spark import failure_columns
from tests.unit.test_validation_rules import CASES, as_table

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_spark_rules_fail_exactly_the_shared_cases() -> None:
    schema = load_schema("churn")
    spark = spark_session(Settings(_env_file=None))
    df = spark.createDataFrame(as_table([c["record"] for c in CASES]).to_pandas())
    failed = failure_columns(df, schema)
    rows = df.select(*[c.alias(name) for name, c in failed.items()]).collect()
    for case, row in zip(CASES, rows):
        assert sorted(name for name in failed if row[name]) == sorted(case["fails"]), case["record"]
