"""Records against a registered model's signature: every column present, none extra, each of its type.

The signature is MLflow's (its input ``ColSpec`` names, types and ``required`` flags), read from the
version's MLmodel file. A request's records are checked column by column in plain Python (a
single-record request costs microseconds, no DataFrame) and come out as one typed NumPy array per
column, which every serving form reads. Every problem is reported, each naming its record and column,
as FastAPI reports a body that does not fit its schema (``loc``, ``msg``, ``type``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import numpy as np

from nimbus.errors import Unprocessable

# MLflow ColSpec type -> (what JSON values it takes, the NumPy dtype of the column)
NUMERIC = {"double": np.float64, "float": np.float32, "long": np.int64, "integer": np.int32}
MAX_ERRORS = 20  # a request of 1,000 bad records is told about the first ones


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # double | float | long | integer | boolean | string | datetime | binary | any
    required: bool = True

    @property
    def numeric(self) -> bool:
        return self.type in NUMERIC

    def synthetic(self) -> Any:
        """A plausible value of this type (warming a model logged without an input example)."""
        return {"boolean": False, "string": "", "datetime": "2024-01-01T00:00:00"}.get(
            self.type, 0 if self.type in ("long", "integer") else 0.0)

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not of this column's type, or None."""
        if value is None:
            return None if not self.required else f"null, but {self.name} is required ({self.type})"
        kind = self.type
        if kind in ("double", "float"):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif kind in ("long", "integer"):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "boolean":
            ok = isinstance(value, bool)
        elif kind in ("string", "binary"):
            ok = isinstance(value, str)
        elif kind == "datetime":
            ok = isinstance(value, str) and _iso(value)
            if not ok:
                return f"expected an ISO-8601 date or datetime string, got {_shown(value)}"
        else:
            ok = True
        return None if ok else f"expected {kind}, got {_shown(value)}"


@dataclass(frozen=True)
class Signature:
    columns: tuple[Column, ...]

    @classmethod
    def from_specs(cls, specs: Sequence[tuple[str, str, bool]]) -> Signature:
        return cls(tuple(Column(n, t, r) for n, t, r in specs))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def as_dict(self) -> list[dict[str, Any]]:
        return [{"name": c.name, "type": c.type, "required": c.required} for c in self.columns]

    def synthetic(self) -> dict[str, Any]:
        return {c.name: c.synthetic() for c in self.columns}

    def arrays(self, records: Sequence[Any], limit: int | None = None) -> dict[str, np.ndarray]:
        """Check ``records`` (a list of JSON objects) and return column -> typed array; Unprocessable
        naming every bad record and column (the first MAX_ERRORS) otherwise."""
        if limit is not None and len(records) > limit:
            raise Unprocessable([{"loc": ["body"], "type": "too_long",
                                  "msg": f"{len(records)} records; at most {limit} per request"}])
        if not records:
            raise Unprocessable([{"loc": ["body"], "type": "too_short", "msg": "no records: send one or more"}])
        errors: list[dict[str, Any]] = []
        names = self.names
        wanted = set(names)
        for i, record in enumerate(records):
            if not isinstance(record, Mapping):
                errors.append({"loc": ["body", i], "type": "model_type",
                               "msg": f"a record is a JSON object of the model's columns, got {_shown(record)}"})
                continue
            if record.keys() != wanted:
                for name in names:
                    if name not in record:
                        errors.append({"loc": ["body", i, name], "type": "missing",
                                       "msg": f"missing column {name} ({self._type(name)})"})
                for name in record:
                    if name not in wanted:
                        errors.append({"loc": ["body", i, str(name)], "type": "extra_forbidden",
                                       "msg": f"unknown column {name}: the model takes {', '.join(names)}"})
            for column in self.columns:
                if column.name in record and (why := column.check(record[column.name])) is not None:
                    errors.append({"loc": ["body", i, column.name], "type": "type_error", "msg": why})
            if len(errors) >= MAX_ERRORS:
                break
        if errors:
            raise Unprocessable(errors[:MAX_ERRORS])
        return {c.name: _array(c, [r[c.name] for r in records]) for c in self.columns}

    def _type(self, name: str) -> str:
        return next(c.type for c in self.columns if c.name == name)


def _array(column: Column, values: list[Any]) -> np.ndarray:
    if column.numeric:
        dtype = NUMERIC[column.type]
        if any(v is None for v in values):  # optional numbers: missing is NaN (integers become floats)
            return np.array([math.nan if v is None else v for v in values], dtype=np.float64)
        return np.array(values, dtype=dtype)
    if column.type == "boolean" and not any(v is None for v in values):
        return np.array(values, dtype=bool)
    if column.type == "datetime":
        return np.array([np.datetime64(v) if v is not None else np.datetime64("NaT") for v in values],
                        dtype="datetime64[ns]")
    return np.array(values, dtype=object)


def _iso(text: str) -> bool:
    try:
        (datetime if "T" in text or " " in text else date).fromisoformat(text)
    except ValueError:
        return False
    return True


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"
