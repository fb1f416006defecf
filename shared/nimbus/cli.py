"""The ``nimbus`` command: the local stack, the function runner and (later) train/batch/automl.

Every error Nimbus raises on purpose is printed as one line, without a traceback, and
the command exits non-zero.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from nimbus.config import get_settings
from nimbus.errors import NimbusError

app = typer.Typer(help="Nimbus: stateless ML functions on Lambda, containers and one laptop.",
                  pretty_exceptions_enable=False, no_args_is_help=True)
local_app = typer.Typer(help="The local stack: real Redis, MongoDB-wire, S3/SQS and MLflow on 127.0.0.1.",
                        no_args_is_help=True)
app.add_typer(local_app, name="local")

out = Console()


def _stack(mlflow_server: bool = False):  # noqa: ANN202
    from nimbus.local.stack import LocalStack

    return LocalStack(get_settings(), mlflow_server=mlflow_server)


def _status_table(rows: list[Any], title: str) -> Table:
    table = Table(title=title)
    for column in ("service", "state", "url", "pid", "detail"):
        table.add_column(column, overflow="fold")  # a URL is worth more whole than on one line
    for row in rows:
        state = "[green]up[/green]" if row.up else "[red]down[/red]"
        table.add_row(row.name, state, row.url, str(row.pid or "-"), row.detail)
    return table


Services = Annotated[str | None, typer.Option("--services", "-s", help="Comma-separated subset, e.g. redis,s3.")]


def _names(services: str | None) -> list[str] | None:
    return [n.strip() for n in services.split(",") if n.strip()] if services else None


@local_app.command("up")
def local_up(
    services: Services = None,
    mlflow_server: Annotated[bool, typer.Option(help="Run `mlflow server` instead of using SQLite directly.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each service to be healthy.")] = 60.0,
) -> None:
    """Start the local stack (idempotent) and wait until every service is healthy."""
    stack = _stack(mlflow_server)
    with out.status("starting the local stack..."):
        rows = stack.up(_names(services), timeout_s=timeout)
    out.print(_status_table(rows, f"nimbus local stack (data in {stack.home})"))
    if mlflow_server and not get_settings().mlflow_tracking_uri:
        out.print(f"MLflow server: export NIMBUS_MLFLOW_TRACKING_URI={rows[-1].url}")


@local_app.command("down")
def local_down(services: Services = None) -> None:
    """Stop every service the local stack started; data under .nimbus/ stays."""
    stopped = _stack().down(_names(services))
    out.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@local_app.command("status")
def local_status(services: Services = None) -> None:
    """Show which local services are up; exits 3 when any is down."""
    rows = _stack().status(_names(services))
    out.print(_status_table(rows, "nimbus local stack"))
    if not all(r.up for r in rows):
        raise typer.Exit(3)


@local_app.command("serve")
def local_serve(
    host: Annotated[str | None, typer.Option(help="Default: NIMBUS_GATEWAY_HOST (127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Default: NIMBUS_GATEWAY_PORT (3000).")] = None,
    schedules: Annotated[bool, typer.Option(help="Fire the schedules in serverless.yml.")] = True,
    watch: Annotated[bool, typer.Option(help="Feed drop-folder notifications to the S3-triggered functions.")] = True,
) -> None:
    """Run the local gateway: every httpApi route, schedule and S3 trigger of serverless.yml."""
    import uvicorn

    from nimbus.local.gateway import Gateway, GatewayOptions
    from nimbus.local.serverless import load_project

    settings = get_settings()
    gateway = Gateway(load_project(settings.project_root), settings, GatewayOptions(schedules=schedules, watch=watch))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    routes = [f"{r.method:6} {r.path} -> {fn.name}" for fn in gateway.project.functions.values() for r in fn.http]
    out.print("routes:\n  " + "\n  ".join(routes))
    uvicorn.run(gateway.app, host=host or settings.gateway_host, port=port or settings.gateway_port,
                log_level="warning")


@app.command("invoke")
def invoke(
    function: Annotated[str, typer.Argument(help="A function name from serverless.yml.")],
    event: Annotated[Path | None, typer.Option("--event", "-e", help="JSON event file ('-' for stdin).")] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="The event as a JSON string.")] = None,
) -> None:
    """Call a function's handler with a cloud-shaped event, like `sls invoke local`."""
    from nimbus.local.invoke import Invoker
    from nimbus.local.serverless import load_project

    payload = _read_event(event, data)
    invoker = Invoker(load_project(get_settings().project_root))
    try:
        result = invoker.invoke(function, payload)
    finally:
        invoker.close()
    if not result.ok:
        raise NimbusError(f"{function} failed: {result.payload['errorType']}: {result.payload['errorMessage']}")
    out.print_json(json.dumps(result.payload, default=str))


def _read_event(path: Path | None, data: str | None) -> Any:
    if data is not None and path is not None:
        raise NimbusError("give the event with --event or --data, not both")
    try:
        if data is not None:
            return json.loads(data)
        if path is None:
            return {}
        return json.loads(sys.stdin.read() if str(path) == "-" else path.read_text())
    except FileNotFoundError:
        raise NimbusError(f"event file {path} not found") from None
    except json.JSONDecodeError as exc:
        raise NimbusError(f"event is not valid JSON: {exc}") from None


@app.command("health")
def health() -> None:
    """Check every store directly (no gateway); exits 3 when any is down."""
    from nimbus.health import check_stores

    report = check_stores(get_settings())
    _print_health(report.model_dump())
    if report.status != "ok":
        raise typer.Exit(3)


def _print_health(report: dict[str, Any]) -> None:
    table = Table(title=f"nimbus health: {report['status']}")
    for column in ("store", "state", "url", "latency", "detail"):
        table.add_column(column, overflow="fold")
    for s in report["stores"]:
        state = "[green]up[/green]" if s["up"] else "[red]down[/red]"
        table.add_row(s["store"], state, s["url"], f"{s['latency_ms']:.1f} ms", s["detail"])
    out.print(table)


@app.command("demo")
def demo(
    keep: Annotated[bool, typer.Option(help="Leave the stack running afterwards.")] = False,
) -> None:
    """The main job on the local stack: stack up, the health function through the gateway, stack down."""
    import httpx

    from nimbus.local.gateway import Gateway, GatewayOptions, serving
    from nimbus.local.serverless import load_project

    settings = get_settings()
    stack = _stack()
    already = {r.name for r in stack.status() if r.up and r.managed}
    out.rule("1. local stack up")
    with out.status("starting Redis, MongoDB-wire, S3/SQS, MLflow..."):
        rows = stack.up()
    out.print(_status_table(rows, "local stack"))
    started = [r.name for r in rows if r.name not in already]
    try:
        out.rule("2. the health function, through the local gateway")
        gateway = Gateway(load_project(settings.project_root), settings, GatewayOptions(schedules=False))
        with serving(gateway) as base_url:
            answer = httpx.get(f"{base_url}/health", timeout=30)
        out.print(f"GET {base_url}/health -> HTTP {answer.status_code}")
        _print_health(answer.json())
        if answer.status_code != 200:
            raise NimbusError(f"health answered {answer.status_code}: some store is down")
    finally:
        if not keep:
            out.rule("3. local stack down")
            stopped = stack.down(started) if started else []
            out.print(f"stopped: {', '.join(stopped) or 'nothing (it was already running before the demo)'}")


def main() -> None:
    """Entry point: run the CLI, printing Nimbus errors as one line."""
    # MLflow and alembic narrate schema migrations at INFO; a CLI user needs none of it.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        app()
    except NimbusError as exc:
        print(f"error: {exc}", file=sys.stderr)  # one line, never wrapped or decorated
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
