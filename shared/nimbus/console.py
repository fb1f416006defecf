"""Terminal output shared by the CLI and the demo: tables of services and health, progress, and the
generic tables every command's result falls back on (one document: key/value rows; a list of documents:
one row each), with nested values summarized in a few words."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.status import Status
from rich.table import Table

out = Console()  # results: what a script may read or pipe
err = Console(stderr=True)  # progress and narration: never mixed into the results


def quiet_libraries() -> None:
    """What a CLI user needs none of: MLflow's migrations narrated at INFO, Ray Tune's experiment
    tables and result paths, Optuna's INFO lines, Ray's note that local token auth is on.
    (Set before the libraries are imported; an environment that sets them wins.)"""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter honours verbose=0: silent
    for name, level in (("alembic", logging.WARNING), ("optuna", logging.WARNING),
                        ("ray._private.authentication.authentication_token_setup", logging.ERROR)):
        logging.getLogger(name).setLevel(level)


BRIEF = 60  # characters a nested value gets in a table cell


def brief(value: Any, width: int = BRIEF) -> str:
    """A value in a few words for a table cell: scalars as they are; documents and lists inline, as many
    entries as fit in ``width``, then how many more (``--json`` prints the whole)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, ".4g")
    if isinstance(value, dict | list | tuple):
        entries = [f"{k}={_inner(v, width // 2)}" for k, v in value.items()] if isinstance(value, dict) else \
            [_inner(v, width // 2) for v in value]
        shown: list[str] = []
        for entry in entries:
            if shown and len(", ".join([*shown, entry])) > width:
                break
            shown.append(entry)
        more = len(entries) - len(shown)
        return ", ".join(shown) + (f", ... ({more} more)" if more else "") if entries else \
            ("{}" if isinstance(value, dict) else "[]")
    return str(value)


def _inner(value: Any, width: int) -> str:
    """A value nested in another: bracketed, so where it ends is plain."""
    text = brief(value, width)
    if isinstance(value, dict) and value:
        return "{" + text + "}"
    return f"[{text}]" if isinstance(value, list | tuple) and value else text


def fields_table(doc: dict[str, Any], title: str | None = None) -> Table:
    """One document as key/value rows; nested values summarized (a long string is folded, not cut)."""
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in doc.items():
        table.add_row(str(key), value if isinstance(value, str) else brief(value))
    return table


def rows_table(rows: list[dict[str, Any]], title: str | None = None, columns: list[str] | None = None) -> Table:
    """A list of documents, one row each; the columns are ``columns`` or every key any row has."""
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(brief(row.get(c)) for c in columns))
    return table


def status_table(rows: list[Any], title: str) -> Table:
    table = Table(title=title)
    for column in ("service", "state", "url", "pid", "detail"):
        table.add_column(column, overflow="fold")  # a URL is worth more whole than on one line
    for row in rows:
        state = "[green]up[/green]" if row.up else "[red]down[/red]"
        table.add_row(row.name, state, row.url, str(row.pid or "-"), row.detail)
    return table


def print_health(report: dict[str, Any]) -> None:
    out.print(health_table(report))


def health_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"nimbus health: {report['status']}")
    for column in ("store", "state", "url", "latency", "detail"):
        table.add_column(column, overflow="fold")
    for s in report["stores"]:
        state = "[green]up[/green]" if s["up"] else "[red]down[/red]"
        table.add_row(s["store"], state, s["url"] or "–", f"{s['latency_ms']:.1f} ms", s["detail"])
    return table


def progress() -> tuple[Status, Callable[[str], None]]:
    """A spinner whose say(message) also logs each step (both on stderr)."""
    status = err.status("working...")

    def say(message: str) -> None:
        status.update(message)
        err.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}", highlight=False)  # a step, not a log record

    return status, say


def live_count(status: Status) -> Callable[[Any], None]:
    """A batch job's ``on_progress``: the records scored so far and the tasks done, on stderr, as they move —
    the status line on a terminal, a line per update otherwise (a log file, a CI job)."""
    def show(p: Any) -> None:
        line = p.describe()
        if err.is_terminal:
            status.update(line)
        else:
            err.print(f"{time.strftime('%H:%M:%S')} {line}", highlight=False)

    return show


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def experiment_results(r: dict[str, Any]) -> None:
    """Per-variant rates with intervals, lift, p-value, chance to beat control; SRM; verdict."""
    table = Table(title=f"{r['experiment']['name']} ({r['experiment']['id']}, {r['experiment']['status']})")
    for column in ("variant", "exposures", "users", "metric", "rate", "95% interval", "lift", "p-value",
                   "P(beat control)"):
        table.add_column(column)
    for v in r["variants"]:
        for name, m in v["metrics"].items():
            table.add_row(v["name"], str(v["exposures"]), str(v["users"]), name, f"{m['rate']:.4f}",
                          f"{m['ci95'][0]:.4f} - {m['ci95'][1]:.4f}", fmt(m["lift"], "+.1%"), fmt(m["p_value"], ".3g"),
                          fmt(m["chance_to_beat_control"], ".3f"))
    out.print(table)
    srm = r["srm"]
    out.print(f"sample ratio: observed {srm['observed']} expected {srm['expected']} "
              f"chi2 {srm['chi2']:.2f} p {srm['p_value']:.3g}" + ("  [red]MISMATCH[/red]" if srm["flagged"] else "  ok"))
    out.print(f"verdict: {r['verdict']['status']}" + (f" ({r['verdict']['winner']})" if r["verdict"]["winner"] else "")
              + f" - {r['verdict']['reason']}")


def drift_tables(checks: list[dict[str, Any]]) -> None:
    """One table per checked model version: PSI and test p-values per feature and for the score."""
    if not checks:
        out.print("no served version to check")
    for check in checks:
        table = Table(title=f"{check['model']} v{check['model_version']} ({', '.join(check['aliases']) or 'no alias'}): "
                            f"{check['status']}, {check['samples']} samples, "
                            f"{'DRIFT' if check['drifted'] else 'no drift'}")
        for column in ("feature", "kind", "PSI", "KS p", "chi2 p", "drifted"):
            table.add_column(column)
        for f in [*check["features"], {"name": "(score)", "kind": "numeric", "chi2_p": None, **check["score"]}]:
            table.add_row(f["name"], f["kind"], fmt(f["psi"]), fmt(f["ks_p"], ".3g"), fmt(f["chi2_p"], ".3g"),
                          "yes" if f["drifted"] else "")
        out.print(table)
