"""A record schema: columns with a type and constraints, cross-field rules, an id column.

Each constraint becomes one named *rule* (``f3.max``, ``segment.allowed``,
``seen_after_signup``...). A record fails a rule when the rule's condition is false; a
missing optional value passes every rule but ``required``. Compilers turn rules into
Arrow compute masks (``arrow.py``) and Spark columns (``spark.py``); a test holds them
to the same verdicts on shared vectors.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, model_validator

from nimbus.errors import InvalidInput

ColumnType = Literal["string", "double", "int", "bool", "date", "timestamp"]
Op = Literal["<", "<=", ">", ">=", "==", "!="]


class SchemaMismatch(InvalidInput):
    """The input's columns do not fit the schema (missing, or of a type that cannot be read)."""


class Column(BaseModel):
    type: ColumnType
    required: bool = False
    min: float | None = None
    max: float | None = None
    allowed: list[str] | None = None
    regex: str | None = None


class CrossRule(BaseModel):
    name: str
    left: str
    op: Op
    right: str | float  # a column name, or a literal


class Rule(BaseModel):
    """One check, as the compilers see it."""

    name: str
    kind: Literal["required", "type", "min", "max", "allowed", "regex", "cross", "unique"]
    column: str
    value: Any = None
    op: Op | None = None
    other: str | float | None = None


class RecordSchema(BaseModel):
    name: str
    id: str
    max_bad_share: float = Field(default=0.05, ge=0, le=1)
    columns: dict[str, Column]
    rules: list[CrossRule] = Field(default_factory=list)
    strict: bool = False  # refuse inputs with columns the schema does not declare

    @model_validator(mode="after")
    def _check(self) -> RecordSchema:
        if self.id not in self.columns:
            raise ValueError(f"id column {self.id!r} is not declared")
        for rule in self.rules:
            for side in (rule.left, rule.right):
                if isinstance(side, str) and side not in self.columns:
                    raise ValueError(f"rule {rule.name}: unknown column {side!r}")
        return self

    def compiled(self) -> list[Rule]:
        """Every rule, in a stable order: per column (required, type, min, max, allowed, regex), then cross rules."""
        out: list[Rule] = []
        for name, col in self.columns.items():
            if col.required:
                out.append(Rule(name=f"{name}.required", kind="required", column=name))
            if col.type != "string":
                out.append(Rule(name=f"{name}.type", kind="type", column=name, value=col.type))
            if col.min is not None:
                out.append(Rule(name=f"{name}.min", kind="min", column=name, value=col.min))
            if col.max is not None:
                out.append(Rule(name=f"{name}.max", kind="max", column=name, value=col.max))
            if col.allowed is not None:
                out.append(Rule(name=f"{name}.allowed", kind="allowed", column=name, value=col.allowed))
            if col.regex is not None:
                out.append(Rule(name=f"{name}.regex", kind="regex", column=name, value=col.regex))
        for rule in self.rules:
            out.append(Rule(name=rule.name, kind="cross", column=rule.left, op=rule.op, other=rule.right))
        return out

    def unique_rule(self) -> Rule:
        """The id column's uniqueness over a whole input: not a rule of one record, so not in
        :meth:`compiled`; a batch run checks it with the others (every record of a shared id fails it)."""
        return Rule(name=f"{self.id}.unique", kind="unique", column=self.id)

    def describe(self, rule: Rule) -> str:
        """A reason a person reads in the quarantine file."""
        match rule.kind:
            case "required":
                return f"{rule.column}: required value is missing"
            case "type":
                return f"{rule.column}: not a valid {rule.value}"
            case "min":
                return f"{rule.column}: below minimum {rule.value:g}"
            case "max":
                return f"{rule.column}: above maximum {rule.value:g}"
            case "allowed":
                return f"{rule.column}: not one of {', '.join(rule.value)}"
            case "regex":
                return f"{rule.column}: does not match {rule.value}"
            case "unique":
                return f"{rule.column}: duplicate {rule.column} (another record of the input has the same one)"
        return f"{rule.name}: {rule.column} {rule.op} {rule.other} is false"

    def check_columns(self, present: dict[str, str]) -> None:
        """Fail fast when the input cannot be this schema's: ``present`` maps name -> Arrow type."""
        missing = [n for n, c in self.columns.items() if c.required and n not in present]
        problems = [f"missing required column(s) {', '.join(missing)}"] if missing else []
        for name, arrow_type in present.items():
            col = self.columns.get(name)
            if col is None:
                if self.strict:
                    problems.append(f"unexpected column {name}")
                continue
            if arrow_type.startswith(("struct", "list", "map", "large_list", "binary")):
                problems.append(f"column {name} is {arrow_type}, expected {col.type}")
        if problems:
            raise SchemaMismatch(f"input does not match schema {self.name!r}: {'; '.join(problems)}")


def load_schema(source: str | Path | dict) -> RecordSchema:
    """A schema from a dict, a YAML file, or the name of a bundled schema (``churn``)."""
    if isinstance(source, dict):
        return RecordSchema.model_validate(source)
    path = Path(source)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return RecordSchema.model_validate(yaml.safe_load(path.read_text()))
    return _bundled(str(source))


@lru_cache(maxsize=16)
def _bundled(name: str) -> RecordSchema:
    files = resources.files("nimbus.validation") / "schemas" / f"{name}.yaml"
    if not files.is_file():
        raise InvalidInput(f"no schema {name!r}: give a YAML file or one of the bundled schemas")
    raw = yaml.safe_load(files.read_text())
    if name == "churn":  # the example models' 20 features, declared in code
        for j in range(20):
            raw["columns"][f"f{j}"] = {"type": "double", "required": True, "min": -50, "max": 50}
    return RecordSchema.model_validate(raw)
