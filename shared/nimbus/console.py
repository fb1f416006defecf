"""Terminal output shared by the CLI and the demo: tables of services and health, progress."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.status import Status
from rich.table import Table

out = Console()  # results: what a script may read or pipe
err = Console(stderr=True)  # progress and narration: never mixed into the results


def status_table(rows: list[Any], title: str) -> Table:
    table = Table(title=title)
    for column in ("service", "state", "url", "pid", "detail"):
        table.add_column(column, overflow="fold")  # a URL is worth more whole than on one line
    for row in rows:
        state = "[green]up[/green]" if row.up else "[red]down[/red]"
        table.add_row(row.name, state, row.url, str(row.pid or "-"), row.detail)
    return table


def print_health(report: dict[str, Any]) -> None:
    table = Table(title=f"nimbus health: {report['status']}")
    for column in ("store", "state", "url", "latency", "detail"):
        table.add_column(column, overflow="fold")
    for s in report["stores"]:
        state = "[green]up[/green]" if s["up"] else "[red]down[/red]"
        table.add_row(s["store"], state, s["url"], f"{s['latency_ms']:.1f} ms", s["detail"])
    out.print(table)


def progress() -> tuple[Status, Callable[[str], None]]:
    """A spinner whose say(message) also logs each step (both on stderr)."""
    status = err.status("working...")

    def say(message: str) -> None:
        status.update(message)
        err.log(message)

    return status, say
