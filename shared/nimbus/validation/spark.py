"""Rules compiled to Spark column expressions: the Spark validation stage (counts by rule)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nimbus.validation.arrow import _NUMBER
from nimbus.validation.schema import RecordSchema, Rule

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

_SPARK_TYPES = {"double": "double", "int": "bigint", "bool": "boolean", "date": "date", "timestamp": "timestamp",
                "string": "string"}


def failure_columns(df: DataFrame, schema: RecordSchema, rules: list[Rule] | None = None) -> dict[str, Column]:
    """rule name -> a boolean Column, true where a record fails the rule."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    rules = rules if rules is not None else schema.compiled()
    present = {f.name: f.dataType for f in df.schema.fields}
    typed: dict[str, Column] = {}
    unreadable: dict[str, Column] = {}
    for name, col in schema.columns.items():
        if name not in present:
            typed[name] = F.lit(None).cast(_SPARK_TYPES[col.type])
            unreadable[name] = F.lit(False)
            continue
        raw = F.col(name)
        if isinstance(present[name], StringType) and col.type != "string":
            text = F.trim(raw)
            is_present = text.isNotNull() & (text != "")
            if col.type in ("double", "int"):
                ok = text.rlike(_NUMBER)
                if col.type == "int":
                    ok = ok & ~text.rlike(r"[.eE]")
            elif col.type == "bool":
                ok = F.lower(text).isin("true", "false", "1", "0")
            else:
                fmt = "yyyy-MM-dd" if col.type == "date" else "yyyy-MM-dd'T'HH:mm:ss"
                ok = F.try_to_timestamp(text, F.lit(fmt)).isNotNull()
            ok = F.coalesce(ok, F.lit(False))
            clean = F.when(ok, text)
            if col.type == "bool":
                typed[name] = F.when(clean.isNotNull(), F.lower(clean).isin("true", "1"))
            elif col.type in ("date", "timestamp"):
                fmt = "yyyy-MM-dd" if col.type == "date" else "yyyy-MM-dd'T'HH:mm:ss"
                typed[name] = F.try_to_timestamp(clean, F.lit(fmt)).cast(_SPARK_TYPES[col.type])
            else:
                typed[name] = clean.cast(_SPARK_TYPES[col.type])
            unreadable[name] = is_present & ~ok
        elif col.type == "string":  # an empty text is a missing value
            typed[name] = F.when(F.trim(raw.cast("string")) != "", raw.cast("string"))
            unreadable[name] = F.lit(False)
        else:
            typed[name] = raw.cast(_SPARK_TYPES[col.type])
            unreadable[name] = raw.isNotNull() & typed[name].isNull()

    ops = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
           "==": lambda a, b: a == b, "!=": lambda a, b: a != b}
    out: dict[str, Column] = {}
    for rule in rules:
        v = typed[rule.column]
        if rule.kind == "required":  # absent; a present but unreadable value is a type failure
            failed = v.isNull() & ~unreadable[rule.column]
        elif rule.kind == "type":
            failed = unreadable[rule.column]
        elif rule.kind == "min":
            failed = v < F.lit(rule.value)
        elif rule.kind == "max":
            failed = v > F.lit(rule.value)
        elif rule.kind == "allowed":
            failed = ~v.isin(*rule.value)
        elif rule.kind == "regex":
            failed = ~v.rlike(rule.value)
        else:
            other = typed[rule.other] if isinstance(rule.other, str) else F.lit(rule.other)
            failed = ~ops[str(rule.op)](v, other)  # a compare rule always has an op
        out[rule.name] = F.coalesce(failed, F.lit(False))
    return out


def count_failures(df: DataFrame, schema: RecordSchema) -> tuple[int, int, dict[str, int]]:
    """(records, invalid records, failures by rule) in one Spark aggregation; with the whole-input
    unique-id rule (a window over the id), as the scoring pass checks it."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    unique = schema.unique_rule()
    ids = F.col(schema.id).cast("string")
    df = df.withColumn("__id_count", F.count(F.lit(1)).over(Window.partitionBy(ids)))
    failed = failure_columns(df, schema)
    present = ids.isNotNull() & (F.trim(ids) != "")
    failed[unique.name] = F.coalesce(present & (F.col("__id_count") > 1), F.lit(False))
    # One greatest() over the rules, not a chain of ORs: Spark Connect sends the expression as a protobuf,
    # and a chain one level deeper per rule passes its nesting limit (100) on a schema of ~60 rules.
    any_failed = F.greatest(F.lit(False), F.lit(False), *failed.values())
    row = df.select(
        F.count(F.lit(1)).alias("__n"),
        F.sum(any_failed.cast("long")).alias("__bad"),
        *[F.sum(c.cast("long")).alias(name) for name, c in failed.items()],
    ).collect()[0]
    counts = {name: int(row[name] or 0) for name in failed}
    return int(row["__n"]), int(row["__bad"] or 0), counts
