"""Rules compiled to Arrow compute: vectorised checks inside the scoring pass."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nimbus.validation.schema import RecordSchema, Rule

_NUMBER = r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$"
_ARROW_TYPES = {"double": pa.float64(), "int": pa.int64(), "bool": pa.bool_(), "date": pa.date32(),
                "timestamp": pa.timestamp("us", tz="UTC"), "string": pa.string()}
_OPS = {"<": pc.less, "<=": pc.less_equal, ">": pc.greater, ">=": pc.greater_equal, "==": pc.equal,
        "!=": pc.not_equal}


def _typed(column: pa.ChunkedArray | pa.Array, kind: str) -> tuple[pa.Array, pa.Array]:
    """(values cast to ``kind`` with unreadable ones null, mask of present-but-unreadable values)."""
    target = _ARROW_TYPES[kind]
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if kind == "string" and pa.types.is_string(column.type):  # an empty text is a missing value
        blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(column), ""), False)
        return pc.if_else(blank, pa.scalar(None, pa.string()), column), pa.array(np.zeros(len(column), bool))
    if column.type == target:
        return column, pa.array(np.zeros(len(column), bool))
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        text = pc.utf8_trim_whitespace(column)
        present = pc.and_(pc.is_valid(text), pc.not_equal(text, ""))
        if kind in ("double", "int"):
            ok = pc.match_substring_regex(text, _NUMBER)
            if kind == "int":
                ok = pc.and_(ok, pc.invert(pc.match_substring_regex(text, r"[.eE]")))
        elif kind == "bool":
            ok = pc.is_in(pc.utf8_lower(text), pa.array(["true", "false", "1", "0"]))
        else:
            ok = pc.is_valid(pc.strptime(text, "%Y-%m-%d" if kind == "date" else "%Y-%m-%dT%H:%M:%S",
                                         "s", error_is_null=True))
        ok = pc.fill_null(ok, False)
        clean = pc.if_else(ok, text, pa.scalar(None, pa.string()))
        if kind == "bool":
            values = pc.is_in(pc.utf8_lower(clean), pa.array(["true", "1"]))
            values = pc.if_else(pc.is_valid(clean), values, pa.scalar(None, pa.bool_()))
        elif kind in ("date", "timestamp"):
            parsed = pc.strptime(clean, "%Y-%m-%d" if kind == "date" else "%Y-%m-%dT%H:%M:%S", "s",
                                 error_is_null=True)
            values = pc.cast(parsed, target)
        else:
            values = pc.cast(clean, target)
        return values, pc.fill_null(pc.and_(present, pc.invert(ok)), False)
    try:
        return pc.cast(column, target), pa.array(np.zeros(len(column), bool))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.nulls(len(column), target), pc.fill_null(pc.is_valid(column), False)


@dataclass
class Verdict:
    valid: np.ndarray  # bool per row
    failures: dict[str, np.ndarray]  # rule name -> bool per row (True = failed)
    typed: dict[str, pa.Array]  # columns cast to their declared types

    def reasons(self, schema: RecordSchema, rules: list[Rule]) -> list[list[str]]:
        """Every reason of every invalid row, in row order."""
        bad = np.flatnonzero(~self.valid)
        by_rule = [(schema.describe(r), self.failures[r.name][bad]) for r in rules]
        return [[text for text, failed in by_rule if failed[k]] for k in range(len(bad))]


def check(table: pa.Table, schema: RecordSchema, rules: list[Rule] | None = None,
          duplicates: frozenset[str] | None = None) -> Verdict:
    """Evaluate every rule on ``table``; missing optional columns count as empty.

    A ``unique`` rule fails the records whose id (as text) is in ``duplicates`` — the ids shared
    across the whole input, which one table (a split) cannot see; None: those shared within ``table``."""
    rules = rules if rules is not None else schema.compiled()
    n = table.num_rows
    typed: dict[str, pa.Array] = {}
    type_fail: dict[str, np.ndarray] = {}
    for name, col in schema.columns.items():
        if name in table.column_names:
            values, unreadable = _typed(table.column(name), col.type)
        else:
            values, unreadable = pa.nulls(n, _ARROW_TYPES[col.type]), pa.array(np.zeros(n, bool))
        typed[name] = values
        type_fail[name] = unreadable.to_numpy(zero_copy_only=False)

    failures: dict[str, np.ndarray] = {}
    for rule in rules:
        values = typed[rule.column]
        if rule.kind == "required":  # absent; a present but unreadable value is a type failure
            failures[rule.name] = pc.is_null(values).to_numpy(zero_copy_only=False) & ~type_fail[rule.column]
            continue
        elif rule.kind == "type":
            failures[rule.name] = type_fail[rule.column]
            continue
        elif rule.kind == "unique":
            ids = pc.cast(values, pa.string())
            if duplicates is None:
                counts = pc.value_counts(ids.filter(pc.is_valid(ids)))
                shared = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
            else:
                shared = pa.array(sorted(duplicates), pa.string())
            failed = pc.is_in(ids, shared)
        elif rule.kind == "min":
            failed = pc.less(values, rule.value)
        elif rule.kind == "max":
            failed = pc.greater(values, rule.value)
        elif rule.kind == "allowed":
            failed = pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, pa.array(rule.value))))
        elif rule.kind == "regex":
            failed = pc.and_(pc.is_valid(values), pc.invert(pc.match_substring_regex(values, rule.value)))
        else:
            other = typed[rule.other] if isinstance(rule.other, str) else rule.other
            failed = pc.invert(_OPS[str(rule.op)](values, other))  # a compare rule always has an op
        # null operands: the rule does not apply (required catches missing values)
        failures[rule.name] = pc.fill_null(failed, False).to_numpy(zero_copy_only=False)
    bad = np.zeros(n, bool)
    for failed in failures.values():
        bad |= failed
    return Verdict(~bad, failures, typed)
