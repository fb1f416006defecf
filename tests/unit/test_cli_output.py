"""What the CLI prints: a table or a summary for people, ``--json`` for machines (every command that
prints a result takes it), nested values summarized in a table cell, batch progress in words."""

from __future__ import annotations

import datetime
import inspect
import json

import pytest
import typer

from nimbus import cli
from nimbus.batch.spark import TaskProgress
from nimbus.console import brief, fields_table, out, rows_table

# Long-running processes and the narrated demo: they print no result document.
NO_RESULT = {"local serve", "recommend serve", "automl worker", "demo"}


def commands(app: typer.Typer, prefix: str = "") -> dict[str, object]:
    found = {f"{prefix}{c.name or c.callback.__name__}": c.callback for c in app.registered_commands}
    for group in app.registered_groups:
        found.update(commands(group.typer_instance, f"{prefix}{group.name} "))
    return found


def test_every_command_that_prints_a_result_takes_json() -> None:
    every = commands(cli.app)
    assert {"batch run", "models list", "health", "keys new", "experiments results"} <= set(every)
    missing = [name for name, fn in every.items()
               if name not in NO_RESULT and "as_json" not in inspect.signature(fn).parameters]
    assert missing == []
    assert all(inspect.signature(every[name]).parameters["as_json"].annotation == "AsJson"
               for name in every if name not in NO_RESULT)  # the one option, not a copy


def test_json_is_the_whole_document_alone_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    doc = {"run_key": "k1", "counts": {"records": 3, "scored": 2}, "at": datetime.date(2026, 12, 7)}
    cli.emit(doc, True, "a summary that must not be printed")
    printed = capsys.readouterr()
    assert json.loads(printed.out) == {"run_key": "k1", "counts": {"records": 3, "scored": 2}, "at": "2026-12-07"}
    assert printed.err == ""


def test_the_default_is_the_summary_or_the_table_of_the_document(capsys: pytest.CaptureFixture[str]) -> None:
    cli.emit({"a": 1}, False, "moved [champion] from 1 to 2")
    assert capsys.readouterr().out == "moved [champion] from 1 to 2\n"  # brackets are text, not markup
    with out.capture() as captured:
        cli.emit({"run_key": "k1", "failures": {"f3.max": 2}}, False)
    table = captured.get()
    assert "run_key" in table and "k1" in table and "f3.max=2" in table
    with pytest.raises(ValueError):
        json.loads(table)


def test_nested_values_are_summarized_to_what_fits() -> None:
    assert brief({"churn-lr": "1", "churn-hgb": "2"}) == "churn-lr=1, churn-hgb=2"
    assert brief({"x": {"y": [1, 2]}}) == "x={y=[1, 2]}"
    assert brief(list(range(100)), width=20) == "0, 1, 2, 3, 4, 5, 6, ... (93 more)"
    assert brief(None) == "-" and brief({}) == "{}" and brief([]) == "[]" and brief(0.123456) == "0.1235"
    assert len(brief({f"rule{i}": i for i in range(50)})) < 80


def test_a_document_is_key_value_rows_and_a_list_one_row_each() -> None:
    assert fields_table({"a": 1, "b": {"c": 2}}).row_count == 2
    table = rows_table([{"name": "m1", "versions": [1, 2]}, {"name": "m2", "aliases": {"champion": "3"}}])
    assert [c.header for c in table.columns] == ["name", "versions", "aliases"] and table.row_count == 2


def test_batch_progress_reads_as_records_scored_of_the_total() -> None:
    assert TaskProgress(120_000, 1_000_000, 3, 8).describe() == "scored 120,000 of 1,000,000 records (3/8 tasks)"
    assert TaskProgress(500, None, 1, 2).describe() == "scored 500 records (1/2 tasks)"  # CSV: no total before
