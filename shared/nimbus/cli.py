"""The ``nimbus`` command: the local stack, the function runner, and every job (recommend, batch, automl,
models, experiments, monitor) as a user drives it from a terminal.

Every command that prints a result prints a table or a one-line summary, or with ``--json`` the whole
result as JSON on stdout and nothing else there (``emit``); progress and narration go to stderr.
Every error Nimbus raises on purpose is printed as one line, without a traceback, and
the command exits non-zero.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import RenderableType

from nimbus import logs, tracing
from nimbus.config import get_settings
from nimbus.console import err, fields_table, fmt, health_table, out, progress, rows_table, status_table
from nimbus.errors import InvalidInput, NimbusError, NotFound

AsJson = Annotated[bool, typer.Option("--json", help="Print the whole result as JSON on stdout (and nothing else "
                                                     "there), instead of a table or a summary.")]
Show = str | Callable[[Any], RenderableType | None] | None


def emit(doc: Any, as_json: bool, show: Show = None) -> None:
    """A command's result. ``--json``: the whole document, as JSON, alone on stdout. Otherwise ``show``: a
    one-line summary, or a function that returns a table (or prints its own and returns None); by default
    the generic table of ``doc`` (key/value rows of a document, one row per document of a list)."""
    if as_json:
        print(json.dumps(doc, indent=2, default=str))  # plain print: parseable whatever the terminal's width
        return
    if show is None:
        show = fields_table if isinstance(doc, dict) else rows_table
    shown = show if isinstance(show, str) else show(doc)
    if shown is not None:
        text = isinstance(shown, str)  # a summary: never broken mid-value, its brackets not markup
        out.print(shown, soft_wrap=text, markup=not text)

app = typer.Typer(help="Nimbus: stateless ML functions on Lambda, containers and one laptop.",
                  pretty_exceptions_enable=False, no_args_is_help=True)
local_app = typer.Typer(help="The local stack: real Redis, MongoDB-wire, S3/SQS and MLflow on 127.0.0.1.",
                        no_args_is_help=True)
app.add_typer(local_app, name="local")
recommend_app = typer.Typer(help="Real-time recommendations: data, features, training, promotion, serving.",
                            no_args_is_help=True)
app.add_typer(recommend_app, name="recommend")
batch_app = typer.Typer(help="Batch predictions with Spark: run, validate, labels, example models and data.",
                        no_args_is_help=True)
app.add_typer(batch_app, name="batch")
automl_app = typer.Typer(help="AutoML on Ray: search scikit-learn algorithms, track in MLflow, register the winner.",
                         no_args_is_help=True)
app.add_typer(automl_app, name="automl")
models_app = typer.Typer(help="The model registry: list, promote, roll back (audited).", no_args_is_help=True)
app.add_typer(models_app, name="models")
experiments_app = typer.Typer(help="A/B experiments of recommendation models: create, start, stop, list, results.",
                              no_args_is_help=True)
app.add_typer(experiments_app, name="experiments")
monitor_app = typer.Typer(help="Monitoring: drift of the live models, traffic and latency of the functions.",
                          no_args_is_help=True)
app.add_typer(monitor_app, name="monitor")
ops_app = typer.Typer(help="Operations: back up every store to a folder, restore it into empty stores.",
                      no_args_is_help=True)
app.add_typer(ops_app, name="ops")

alerts_app = typer.Typer(help="Alerts: drift, sample ratio, error rate, p99 latency, bad records, failed jobs.",
                         no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")
keys_app = typer.Typer(help="API keys: make a named, scoped key (Nimbus stores only its hash).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("new")
def keys_new(
    name: Annotated[str, typer.Argument(help="Who holds it, e.g. ops-alice or clickstream (1-64 of A-Z a-z 0-9 _ . -).")],
    scope: Annotated[list[str], typer.Option("--scope", help="admin, automl, events or read; repeat for several.")],
    as_json: AsJson = False,
) -> None:
    """Print a new key (once: hand it to its holder) and the line to add to NIMBUS_API_KEYS or the secret."""
    from nimbus.apikeys import ApiKey

    key, stored = ApiKey.create(name, scope)
    emit({"name": name, "scopes": scope, "key": key, "entry": stored.entry}, as_json,
         lambda d: f"key: {d['key']}\nentry: {d['entry']}")
    err.print("add the entry to NIMBUS_API_KEYS (comma-separated) or to the parameter at NIMBUS_API_KEYS_SOURCE",
              highlight=False, soft_wrap=True)


def _stack(mlflow_server: bool = False):
    from nimbus.local.stack import LocalStack

    return LocalStack(get_settings(), mlflow_server=mlflow_server)


Services = Annotated[str | None, typer.Option("--services", "-s", help="Comma-separated subset, e.g. redis,s3.")]


def _names(services: str | None) -> list[str] | None:
    return [n.strip() for n in services.split(",") if n.strip()] if services else None


@local_app.command("up")
def local_up(
    services: Services = None,
    mlflow_server: Annotated[bool, typer.Option(help="Run `mlflow server` instead of using SQLite directly.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each service to be healthy.")] = 60.0,
    as_json: AsJson = False,
) -> None:
    """Start the local stack (idempotent) and wait until every service is healthy."""
    stack = _stack(mlflow_server)
    with err.status("starting the local stack..."):
        rows = stack.up(_names(services), timeout_s=timeout)
    emit(_service_docs(rows), as_json, lambda _: status_table(rows, f"nimbus local stack (data in {stack.home})"))
    if mlflow_server and not get_settings().mlflow_tracking_uri:
        err.print(f"MLflow server: export NIMBUS_MLFLOW_TRACKING_URI={rows[-1].url}", highlight=False)


def _service_docs(rows: list[Any]) -> list[dict[str, Any]]:
    return [{"service": r.name, "up": r.up, "url": r.url, "pid": r.pid, "detail": r.detail} for r in rows]


@local_app.command("down")
def local_down(services: Services = None, as_json: AsJson = False) -> None:
    """Stop every service the local stack started; data under .nimbus/ stays."""
    stopped = _stack().down(_names(services))
    emit({"stopped": stopped}, as_json, f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@local_app.command("status")
def local_status(services: Services = None, as_json: AsJson = False) -> None:
    """Show which local services are up; exits 3 when any is down."""
    rows = _stack().status(_names(services))
    emit(_service_docs(rows), as_json, lambda _: status_table(rows, "nimbus local stack"))
    if not all(r.up for r in rows):
        raise typer.Exit(3)


@local_app.command("serve")
def local_serve(
    host: Annotated[str | None, typer.Option(help="Default: NIMBUS_GATEWAY_HOST (127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Default: NIMBUS_GATEWAY_PORT (3000).")] = None,
    schedules: Annotated[bool, typer.Option(help="Fire the schedules in serverless.yml.")] = True,
    watch: Annotated[bool, typer.Option(help="Feed drop-folder notifications to the S3-triggered functions.")] = True,
    automl_worker: Annotated[bool, typer.Option(help="Run an AutoML runner process beside the gateway for the "
                                                     "jobs the API queues (not with NIMBUS_RAY_JOBS_URL).")] = True,
) -> None:
    """Run the local gateway: every httpApi route, schedule and S3 trigger of serverless.yml, and an AutoML
    runner process (a child: AutoML jobs never run in the gateway's process)."""
    import signal

    import uvicorn

    from nimbus.local import worker
    from nimbus.local.gateway import Gateway, GatewayOptions
    from nimbus.local.serverless import load_project

    settings = get_settings()
    gateway = Gateway(load_project(settings.project_root), settings, GatewayOptions(schedules=schedules, watch=watch))
    logs.configure(settings)  # JSON lines (or text) at NIMBUS_LOG_LEVEL, as the functions log
    tracing.configure()  # the gateway's spans, when OTEL_* asks for traces
    routes = [f"{r.method:6} {r.path} -> {fn.name}" for fn in gateway.project.functions.values() for r in fn.http]
    out.print("routes:\n  " + "\n  ".join(routes))
    # uvicorn re-raises SIGTERM once it has shut down: unwind instead, so the worker child is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with worker.automl_worker(settings, automl_worker) as child:
        if child is not None:
            out.print(f"AutoML worker: pid {child.pid}, log {settings.home / 'logs' / 'automl-worker.log'}")
        uvicorn.run(gateway.app, host=host or settings.gateway_host, port=port or settings.gateway_port,
                    log_level="warning")


@app.command("invoke")
def invoke(
    function: Annotated[str, typer.Argument(help="A function name from serverless.yml.")],
    event: Annotated[Path | None, typer.Option("--event", "-e", help="JSON event file ('-' for stdin).")] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="The event as a JSON string.")] = None,
    as_json: AsJson = False,
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
    emit(result.payload, as_json, lambda p: fields_table(p, f"{function}: answer") if isinstance(p, dict) else str(p))


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
def health(as_json: AsJson = False) -> None:
    """Check every store directly (no gateway); exits 3 when any is down."""
    from nimbus.health import check_stores

    report = check_stores(get_settings())
    emit(report.model_dump(), as_json, health_table)
    if report.status != "ok":
        raise typer.Exit(3)


@app.command("demo")
def demo(
    keep: Annotated[bool, typer.Option(help="Leave the stack up and serve the dashboard until Ctrl-C.")] = False,
    users: Annotated[int, typer.Option(min=50, help="Synthetic users for the recommendation demo.")] = 2000,
    items: Annotated[int, typer.Option(min=50, help="Synthetic items.")] = 1000,
    automl_budget: Annotated[float, typer.Option(min=10, help="Seconds for the AutoML job.")] = 45,
) -> None:
    """The three jobs on the local stack: recommendations (A/B test, drift), batch predictions, AutoML."""
    from nimbus.config import get_settings as settings_of
    from nimbus.demo import run_demo

    # The demo serves a few hundred answers: sample each for drift, so a check has enough to judge.
    os.environ.setdefault("NIMBUS_DRIFT_SAMPLE_RATE", "1")
    settings_of.cache_clear()
    run_demo(settings_of(), out, keep=keep, users=users, items=items, automl_budget_s=automl_budget)


# ---- recommend -------------------------------------------------------------------------
@recommend_app.command("generate")
def recommend_generate(
    users: Annotated[int, typer.Option(min=10, help="How many users.")] = 5000,
    items: Annotated[int, typer.Option(min=10, help="How many items.")] = 2000,
    days: Annotated[int, typer.Option(min=1)] = 60,
    seed: Annotated[int, typer.Option()] = 7,
    out_dir: Annotated[str | None, typer.Option("--out", help="A folder; default: upload to the data bucket.")] = None,
    as_json: AsJson = False,
) -> None:
    """Make a synthetic interaction log and catalogue (Parquet), locally or in S3."""
    from nimbus.recommend.data import generate
    from nimbus.recommend.publish import write_dataset

    with err.status("generating..."):
        dataset = generate(users, items, days=days, seed=seed)
        where = write_dataset(dataset, get_settings(), out_dir)
    doc = {"events": len(dataset.interactions), "users": users, "items": items, "where": where}
    emit(doc, as_json, f"{doc['events']:,} events, {users:,} users, {items:,} items -> {where}")


@recommend_app.command("features")
def recommend_features(
    logs: Annotated[str | None, typer.Option(help="Logs (file, folder or s3://); default: the data bucket.")] = None,
    catalogue: Annotated[str | None, typer.Option(help="Catalogue (file or s3://).")] = None,
    as_json: AsJson = False,
) -> None:
    """Recompute batch features and swap them into Redis (what the scheduled `features` function does)."""
    from nimbus.recommend.pipeline import refresh_features

    status, say = progress()
    with status:
        result = refresh_features(get_settings(), logs, catalogue, progress=say)
    emit(result, as_json, lambda r: fields_table(r, "features refreshed"))


@recommend_app.command("train")
def recommend_train(
    logs: Annotated[str | None, typer.Option(help="Logs (file, folder or s3://); default: the data bucket.")] = None,
    catalogue: Annotated[str | None, typer.Option(help="Catalogue (file or s3://).")] = None,
    promote: Annotated[bool, typer.Option(help="Make the new version the champion and publish it live.")] = True,
    as_json: AsJson = False,
) -> None:
    """Train the ranker, register it in MLflow with its metrics and (by default) promote it."""
    from nimbus.recommend.data import load_dataset
    from nimbus.recommend.models import register
    from nimbus.recommend.pipeline import default_sources
    from nimbus.recommend.training import train

    settings = get_settings()
    status, say = progress()
    with status:
        if logs is None:
            logs, default_catalogue = default_sources(settings)
            catalogue = catalogue or default_catalogue
        say(f"reading {logs}")
        result = train(load_dataset(logs, catalogue), progress=say)
        say("registering in MLflow")
        version = register(result, settings, promote=promote)
    m = result.metrics
    emit({"model": "nimbus-recommender", "version": version, "promoted": promote, "metrics": m}, as_json,
         f"registered nimbus-recommender version {version}" + (" (champion, live)" if promote else "") + "\n"
         f"recall@10 {m['recall_at_10']:.3f} vs popularity {m['popular_recall_at_10']:.3f}; "
         f"NDCG@10 {m['ndcg_at_10']:.3f} vs {m['popular_ndcg_at_10']:.3f} ({int(m['test_users'])} test users)")


@recommend_app.command("promote")
def recommend_promote(
    version: Annotated[str, typer.Argument(help="Registry version of nimbus-recommender.")],
    alias: Annotated[str, typer.Option(help="champion, or challenger for an experiment.")] = "champion",
    as_json: AsJson = False,
) -> None:
    """Point an alias at a version; every serving process swaps to it without a failed request."""
    from nimbus.recommend.models import promote_version

    record = promote_version(get_settings(), version, alias)
    emit(record, as_json, f"nimbus-recommender {alias} -> version {record['details']['to']} "
                          f"(was {record['details']['from']}; published live, audited)")


@recommend_app.command("serve")
def recommend_serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")] = 2,
) -> None:
    """Serve the recommendation API with uvicorn (a container's entry point)."""
    import uvicorn

    out.print(f"serving http://{host}:{port}/recommendations/{{user_id}}  (docs: /docs)")
    uvicorn.run("nimbus.api.recommend:create_recommend_app", factory=True, host=host, port=port,
                workers=workers, log_level="warning", access_log=False)


# ---- batch -----------------------------------------------------------------------------
@batch_app.command("run")
def batch_run(
    input_uri: Annotated[str, typer.Argument(help="CSV/Parquet file or folder, local or s3://.")],
    models: Annotated[str | None, typer.Option(help="name@alias or name@version, comma-separated.")] = None,
    schema: Annotated[str | None, typer.Option(help="Bundled schema name or a YAML file.")] = None,
    sinks: Annotated[str | None, typer.Option(help="parquet,mongodb")] = None,
    max_bad_share: Annotated[float | None, typer.Option(help="Fail past this share of bad records.")] = None,
    as_json: AsJson = False,
) -> None:
    """Score a file with registry models on Spark: validate, score, write, report, audit. While the scoring job
    runs, stderr shows the records scored so far and the tasks done."""
    from nimbus.batch.job import RunRequest, run_batch
    from nimbus.console import live_count

    settings = get_settings()
    request = RunRequest.from_settings(settings, input_uri, models=models, schema=schema, sinks=sinks,
                                       max_bad_share=max_bad_share)
    status, say = progress()
    with status:
        result = run_batch(settings, request, progress=say, on_progress=live_count(status))
    emit(result.as_dict(), as_json, lambda d: fields_table(d, f"batch run {d['run_key']}: {d['status']}"))


@batch_app.command("validate")
def batch_validate(
    input_uri: Annotated[str, typer.Argument(help="CSV/Parquet file or folder, local or s3://.")],
    schema: Annotated[str | None, typer.Option(help="Bundled schema name or a YAML file.")] = None,
    as_json: AsJson = False,
) -> None:
    """Count validation failures by rule with Spark, without scoring (fails past the threshold)."""
    from nimbus.batch.job import BatchJob, RunRequest

    settings = get_settings()
    job = BatchJob(settings, RunRequest.from_settings(settings, input_uri, schema=schema))
    with err.status("validating with Spark..."):
        key, _ = job.prepare()
        counts = job.validate(key)
    emit({"run_key": key, **counts}, as_json, lambda d: fields_table(d, f"validated {input_uri}"))


@batch_app.command("make-models")
def batch_make_models(
    rows: Annotated[int, typer.Option(help="Training rows.")] = 50_000,
    as_json: AsJson = False,
) -> None:
    """Train and register the example churn models (churn-lr, churn-hgb) as champions."""
    from nimbus.batch.examples import train_models

    with err.status("training churn-lr and churn-hgb..."):
        versions = train_models(get_settings(), rows)
    emit(versions, as_json, f"registered and promoted: {', '.join(f'{n} v{v}' for n, v in versions.items())}")


@batch_app.command("generate")
def batch_generate(
    target: Annotated[str, typer.Argument(help="A .parquet or .csv path, or s3://bucket/key.")],
    rows: Annotated[int, typer.Option(min=1)] = 100_000,
    bad_rows: Annotated[int, typer.Option(min=0, help="Rows with planted errors.")] = 0,
    seed: Annotated[int, typer.Option()] = 0,
    labels: Annotated[str | None, typer.Option(help="Also write the hidden labels here.")] = None,
    as_json: AsJson = False,
) -> None:
    """Make example churn records (and their labels) to score."""
    from nimbus.batch.examples import write_records

    where = write_records(get_settings(), target, rows, bad_rows, seed, labels)
    emit({"records": rows, "bad_records": bad_rows, "where": where, "labels": labels}, as_json,
         f"{rows:,} records ({bad_rows} planted bad) -> {where}")


@batch_app.command("labels")
def batch_labels(
    labels_uri: Annotated[str, typer.Argument(help="CSV/Parquet with record_id, label.")],
    run: Annotated[str, typer.Option(help="The run key the labels belong to.")],
    as_json: AsJson = False,
) -> None:
    """Score a run's predictions against labels that arrived later (AUC, accuracy or RMSE)."""
    from nimbus.batch.performance import score_labels

    emit(score_labels(get_settings(), labels_uri, run), as_json, lambda rows: rows_table(rows, f"run {run} vs labels"))


@batch_app.command("prediction")
def batch_prediction(
    run: Annotated[str, typer.Argument(help="The run key (`nimbus batch run` prints it).")],
    record_id: Annotated[str, typer.Argument(help="The record's id.")],
    as_json: AsJson = False,
) -> None:
    """One record's predictions in a run, from MongoDB: each model's score and version."""
    from nimbus.batch.sinks import prediction
    from nimbus.errors import NotFound

    found = prediction(get_settings(), run, record_id)
    if found is None:
        raise NotFound(f"no prediction for record {record_id!r} in batch run {run!r} (is the run key right, and "
                       f"did the run have the mongodb sink?)")
    emit(found, as_json, lambda doc: rows_table([{"model": m, "version": doc["versions"].get(m), "score": v}
                                                 for m, v in doc["scores"].items()],
                                                f"run {run}, record {record_id}"))


@batch_app.command("performance")
def batch_performance(model: Annotated[str, typer.Argument()], as_json: AsJson = False) -> None:
    """A model's measured performance over runs and versions."""
    from nimbus.batch.performance import performance_history

    emit(performance_history(get_settings(), model), as_json, lambda rows: rows_table(rows, f"{model}: performance"))


# ---- automl ----------------------------------------------------------------------------
@automl_app.command("run")
def automl_run(
    dataset: Annotated[str, typer.Argument(help="CSV/Parquet, local or s3://.")],
    target: Annotated[str, typer.Option(help="The column to predict.")],
    budget: Annotated[float, typer.Option(min=10, help="Seconds for the whole job.")] = 60,
    metric: Annotated[str | None, typer.Option(help="e.g. roc_auc, accuracy, r2, rmse.")] = None,
    task: Annotated[str | None, typer.Option(help="classification or regression (inferred).")] = None,
    max_trials: Annotated[int | None, typer.Option(min=1)] = None,
    include: Annotated[str | None, typer.Option(help="Only these algorithms, comma-separated.")] = None,
    exclude: Annotated[str | None, typer.Option(help="Not these algorithms, comma-separated.")] = None,
    as_json: AsJson = False,
) -> None:
    """Search, track, register — with a live progress bar and the leaderboard at the end."""
    import time as _time

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from nimbus.automl.jobs import JobRequest, submit
    from nimbus.automl.runner import process_started, run_once

    started = process_started()  # the budget is this command's wall time, its start-up included
    settings = get_settings()
    request = JobRequest(dataset=dataset, target=target, budget_s=budget, metric=metric, task=task,
                         max_trials=max_trials, include=include.split(",") if include else None,
                         exclude=exclude.split(",") if exclude else None)
    from nimbus.audit import actor
    from nimbus.errors import InvalidInput

    try:  # trusted: the CLI runs as its user, who may name any file it can read
        job = submit(settings, request, owner=actor(settings), trusted_paths=True)
    except InvalidInput as exc:  # the core's messages name no path: the user's own is shown here
        raise InvalidInput(f"{dataset}: {exc}") from exc
    err.print(f"job {job['_id']}: {job['profile']['task']} on {job['profile']['rows']:,} rows, metric {job['metric']}",
              highlight=False)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err) as bar:
        task_id = bar.add_task("searching", total=budget)
        start = _time.monotonic()

        def show(doc: dict) -> None:
            p = doc.get("progress", {})
            best = "-" if p.get("best") is None else f"{p['best']:.4f}"
            bar.update(task_id, completed=min(budget, _time.monotonic() - start),
                       description=f"{doc['status']}: {p.get('trials', 0)} trials, best {best}")

        doc = run_once(settings, job["_id"], watch=show, started=started)
    emit(doc, as_json, _automl_summary)


def _automl_summary(doc: dict[str, Any]) -> None:
    """A finished job: its leaderboard, held-out score, model and where the time went."""
    from rich.table import Table

    table = Table(title=f"leaderboard ({doc['trials']} configurations, {doc['elapsed_s']:.0f} s)")
    for column in ("#", "algorithm", doc["metric"], "complete"):
        table.add_column(column)
    for row in doc["leaderboard"][:10]:
        table.add_row(str(row["rank"]), row["algorithm"], f"{row['score']:.4f}", "yes" if row["complete"] else "early stop")
    out.print(table)
    t = doc["test"]
    out.print(f"held-out {t['metric']} {t['value']:.4f} (95% CI {t['ci95'][0]:.4f}-{t['ci95'][1]:.4f}); registered "
              f"{doc['model']['name']} v{doc['model']['version']}; report {doc['exports']['report_html']}")
    out.print(timings_line(doc.get("timings") or {}))
    refit = doc.get("refit") or {}
    if refit.get("differs_from_winner"):
        out.print(f"over the memory budget: refit {refit['model']} on {refit['rows']:,} of {refit['training_rows']:,} "
                  f"training rows (searched winner: {refit['searched']})")


def timings_line(timings: dict) -> str:
    """Where an AutoML job's time went, in one line."""
    parts = [(label, timings.get(key)) for label, key in (
        ("first result", "first_result_s"), ("search", "search_s"), ("refit", "refit_s"),
        ("explain+export", "explain_export_s"), ("total", "total_s"))]
    line = "time: " + ", ".join(f"{label} {value:.1f} s" for label, value in parts if isinstance(value, int | float))
    skipped = timings.get("search_skipped")
    return line + (f" (no distributed search: {skipped})" if skipped else "")


@automl_app.command("worker")
def automl_worker(
    once: Annotated[bool, typer.Option(help="Run the queued jobs, then stop.")] = False,
    job: Annotated[str | None, typer.Option(help="Claim and run exactly this queued job, then exit: 0 when it "
                                                 "succeeded, 1 otherwise (a Ray job's entrypoint).")] = None,
    poll: Annotated[float, typer.Option(min=0.1, help="Seconds between looks at an empty queue.")] = 2.0,
) -> None:
    """A runner: claim queued jobs (leased, renewed by a heartbeat; a lapsed lease requeues the job) and run them."""
    import signal

    from nimbus.automl.runner import run_once, work

    # SIGTERM (how `local serve` and container platforms stop it) unwinds like Ctrl-C: Ray is shut down;
    # a job cut short keeps its lease until it lapses, then another runner takes it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = get_settings()
    logs.configure(settings)  # a runner's job-step lines, as the functions log
    tracing.configure()  # before any store: a job's spans join its submitter's trace (the job's `trace`, or TRACEPARENT)
    if job is not None:
        out.print(f"running job {job}")
        run_once(settings, job)  # not queued: Conflict; a failed job: NimbusError; one line, exit 1
        return
    work(settings, once=once, poll_s=poll, say=out.print)


@automl_app.command("list")
def automl_list(
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed or cancelled.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: AsJson = False,
) -> None:
    """Jobs, newest first, a page at a time."""
    from nimbus.automl.jobs import list_jobs

    emit(list_jobs(get_settings(), status=status, limit=limit, offset=offset), as_json, _jobs_table)


def _jobs_table(page: dict[str, Any]) -> None:
    from rich.table import Table

    offset = page.get("offset", 0)
    table = Table(title=f"AutoML jobs {offset + 1}-{offset + len(page['jobs'])} of {page['total']}")
    table.add_column("job", no_wrap=True, min_width=12)  # whole: it is what `show` and `cancel` take
    for column in ("status", "owner", "target", "trials", "best", "attempts", "model", "created"):
        table.add_column(column, overflow="fold")
    for j in page["jobs"]:
        p = j.get("progress") or {}
        table.add_row(j["job_id"], j["status"], str(j.get("owner") or "-"), j["target"], str(p.get("trials", 0)),
                      fmt(p.get("best"), ".4f"), str(j.get("attempts") or 0), str(j.get("model") or "-"),
                      str(j.get("created_at") or "-")[:19])
    out.print(table)
    if page["next_offset"] is not None:
        out.print(f"next page: --offset {page['next_offset']}")


@automl_app.command("show")
def automl_show(job: Annotated[str, typer.Argument(help="The job id.")], as_json: AsJson = False) -> None:
    """One job's record (status, attempts, progress, results or the error)."""
    from nimbus.automl.jobs import get_job

    doc = get_job(get_settings(), job)
    doc.pop("leaderboard", None)  # long: `automl list` and the report have it
    emit(doc, as_json, lambda d: fields_table(d, f"AutoML job {job}: {d.get('status')}"))


@automl_app.command("cancel")
def automl_cancel(job: Annotated[str, typer.Argument(help="The job id.")], as_json: AsJson = False) -> None:
    """Cancel a queued or running job; its runner stops at its next heartbeat without registering a model."""
    from nimbus.audit import actor
    from nimbus.automl.cluster import on_cancel
    from nimbus.automl.jobs import cancel

    settings = get_settings()
    doc = cancel(settings, job, by=actor(settings))
    stopped = on_cancel(settings, doc)
    emit({**doc, "ray_job_stopped": bool(stopped)}, as_json,
         f"job {job} cancelled" + (f"; Ray job {doc['ray_submission_id']} stopped" if stopped else ""))


# ---- models ----------------------------------------------------------------------------
def _governance():
    """Governance with every domain hook registered (the recommender publishes what is promoted)."""
    from nimbus import governance
    from nimbus.recommend import models as _recommender  # noqa: F401 - registers its hook
    from nimbus.serving import hooks as _serving  # noqa: F401 - registers its hook: predict processes hear moves

    return governance


@models_app.command("list")
def models_list(as_json: AsJson = False) -> None:
    """Registered models, their versions and aliases."""
    emit(_governance().list_models(get_settings()), as_json, lambda rows: rows_table(rows, "registered models"))


@models_app.command("promote")
def models_promote(
    name: Annotated[str, typer.Argument()],
    version: Annotated[str, typer.Argument()],
    alias: Annotated[str, typer.Option()] = "champion",
    reason: Annotated[str | None, typer.Option()] = None,
    force: Annotated[bool, typer.Option(help="Record the move even when the alias already points there (e.g. "
                                              "to vouch for an alias someone moved outside Nimbus).")] = False,
    as_json: AsJson = False,
) -> None:
    """Point an alias at a version (audited)."""
    record = _governance().promote(get_settings(), name, version, alias, reason, force=force)
    emit(record, as_json, f"{name}@{alias}: {record['details']['from']} -> {record['details']['to']}")


@models_app.command("rollback")
def models_rollback(
    name: Annotated[str, typer.Argument()],
    alias: Annotated[str, typer.Option()] = "champion",
    as_json: AsJson = False,
) -> None:
    """Return an alias to the version before its last promotion (audited)."""
    record = _governance().rollback(get_settings(), name, alias)
    emit(record, as_json, f"{name}@{alias}: {record['details']['from']} -> {record['details']['to']} (rolled back)")


def _rollout_line(doc: dict[str, Any]) -> str:
    return (f"{doc['model']}: rollout {doc['id']} of v{doc['candidate']} against champion v{doc['champion']} "
            f"({doc['mode']}) {doc['state']} at {doc['share']:g}% (steps {', '.join(f'{s:g}' for s in doc['steps'])})")


def _guardrails_table(doc: dict[str, Any]) -> RenderableType:
    from rich.console import Group

    parts: list[Any] = [_rollout_line(doc)]
    if doc.get("guardrails"):
        parts.append(rows_table(doc["guardrails"], "guardrails (last judgement)",
                                ["name", "status", "value", "limit", "detail"]))
    if isinstance(doc.get("counts"), dict) and "error" not in doc["counts"]:
        parts.append(rows_table([{"role": r, **c} for r, c in doc["counts"].items()], "this step",
                                ["role", "requests", "errors", "p50_ms", "p95_ms", "p99_ms"]))
    parts.append(rows_table(doc.get("history", []), "steps", ["at", "action", "share", "reason"]))
    return Group(*parts)


@models_app.command("rollout")
def models_rollout(
    name: Annotated[str, typer.Argument()],
    version: Annotated[str, typer.Argument()],
    canary: Annotated[str, typer.Option(help="The candidate's first share of the champion's traffic, e.g. 10%.")] = "10%",
    shadow: Annotated[bool, typer.Option(help="Shadow: the candidate scores its share too, the champion answers.")] = False,
    steps: Annotated[str | None, typer.Option(help="Shares to step through, e.g. 10,50,100 (default NIMBUS_ROLLOUT_STEPS).")] = None,
    reason: Annotated[str | None, typer.Option()] = None,
    as_json: AsJson = False,
) -> None:
    """Roll a version out against the champion as a canary, judged by guardrails (audited)."""
    from nimbus.serving import rollout

    _governance()
    try:
        plan = [float(s) for s in steps.split(",")] if steps else None
    except ValueError:
        raise InvalidInput(f"steps: comma-separated percentages, e.g. 10,50,100; got {steps!r}") from None
    doc = rollout.start(get_settings(), name, version, canary, shadow=shadow, steps=plan, reason=reason)
    emit(doc, as_json, _rollout_line(doc) + f"\njudged by the monitor schedule, or now: nimbus models judge {name}")


@models_app.command("rollout-status")
def models_rollout_status(name: Annotated[str, typer.Argument()], as_json: AsJson = False) -> None:
    """A model's running (else latest) rollout: share, guardrails, this step's counts, its steps."""
    from nimbus.serving import rollout

    doc = rollout.status(get_settings(), name)
    if doc is None:
        raise NotFound(f"{name} has had no rollout")
    emit(doc, as_json, _guardrails_table)


@models_app.command("rollout-cancel")
def models_rollout_cancel(
    name: Annotated[str, typer.Argument()],
    reason: Annotated[str | None, typer.Option()] = None,
    as_json: AsJson = False,
) -> None:
    """Stop a running rollout: all traffic back to the champion (audited)."""
    from nimbus.serving import rollout

    _governance()
    doc = rollout.cancel(get_settings(), name, reason)
    emit(doc, as_json, _rollout_line(doc))


@models_app.command("judge")
def models_judge(
    name: Annotated[str | None, typer.Argument(help="One model's rollout (default: every running one).")] = None,
    as_json: AsJson = False,
) -> None:
    """Judge running rollouts now: hold, step up, promote at 100%, or roll back (what the monitor does)."""
    from nimbus.serving import rollout

    _governance()
    emit(rollout.judge(get_settings(), name), as_json, lambda rows: rows_table(
        rows, "rollout judgements", ["model", "rollout", "action", "share", "state", "reason"]))


@models_app.command("history")
def models_history(
    subject: Annotated[str | None, typer.Argument(help="e.g. model:churn-lr or batch:RUNKEY")] = None,
    limit: Annotated[int, typer.Option()] = 20,
    as_json: AsJson = False,
) -> None:
    """The audit trail, newest first."""
    from nimbus.audit import history

    emit(history(get_settings(), subject, limit=limit), as_json, lambda rows: rows_table(
        rows, f"audit trail{' of ' + subject if subject else ''}",
        ["at", "action", "subject", "outcome", "actor", "models", "details"]))


# ---- experiments -----------------------------------------------------------------------
def _experiments_table(rows: list[dict[str, Any]]) -> RenderableType:
    from rich.table import Table

    table = Table(title="experiments")
    for column in ("id", "name", "surface", "status", "variants", "started", "stopped"):
        table.add_column(column, overflow="fold")
    for e in rows:
        variants = ", ".join(f"{v['name']}={v['model']}{'@v' + v['version'] if v['version'] else ''} ({v['weight']:g})"
                             for v in e["variants"])
        table.add_row(e["id"], e["name"], e["surface"], e["status"], variants, e["started_at"] or "-",
                      e["stopped_at"] or "-")
    return table


def _variant_option(text: str) -> dict[str, Any]:
    name, sep, rest = text.partition("=")
    model, sep2, weight = rest.rpartition(":")
    if not (sep and sep2 and name and model):
        from nimbus.errors import InvalidInput

        raise InvalidInput(f"--variant {text!r}: expected NAME=MODEL:WEIGHT, e.g. control=champion:0.5")
    return {"name": name, "model": model, "weight": weight}


@experiments_app.command("create")
def experiments_create(
    name: Annotated[str, typer.Argument(help="A name for the experiment.")],
    variant: Annotated[list[str], typer.Option("--variant", "-v", help="NAME=MODEL:WEIGHT, control first; MODEL is "
                                                                       "an alias (champion) or a version (3).")],
    metric: Annotated[str, typer.Option(help="ctr or conversion: the metric the verdict uses.")] = "ctr",
    seed: Annotated[str | None, typer.Option(help="Hash seed (default: the experiment id).")] = None,
    surface: Annotated[str, typer.Option()] = "recommendations",
    as_json: AsJson = False,
) -> None:
    """Create a draft experiment."""
    from pydantic import ValidationError

    from nimbus.errors import InvalidInput
    from nimbus.experiments.service import ExperimentSpec, create

    try:
        spec = ExperimentSpec.model_validate({"name": name, "surface": surface, "metric": metric, "seed": seed,
                                              "variants": [_variant_option(v) for v in variant]})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"{where}: {first['msg']}") from None
    emit(create(get_settings(), spec), as_json, lambda e: _experiments_table([e]))


@experiments_app.command("start")
def experiments_start(experiment_id: Annotated[str, typer.Argument()], as_json: AsJson = False) -> None:
    """Start a draft: its models go live and users are split between the variants."""
    from nimbus.experiments.service import start

    emit(start(get_settings(), experiment_id), as_json, lambda e: _experiments_table([e]))


@experiments_app.command("stop")
def experiments_stop(experiment_id: Annotated[str, typer.Argument()], as_json: AsJson = False) -> None:
    """Stop a running experiment and freeze its results."""
    from nimbus.experiments.service import stop

    emit(stop(get_settings(), experiment_id), as_json, lambda e: _experiments_table([e]))


@experiments_app.command("list")
def experiments_list(as_json: AsJson = False) -> None:
    """Every experiment, newest first."""
    from nimbus.experiments.service import list_experiments

    emit(list_experiments(get_settings()), as_json, _experiments_table)


@experiments_app.command("results")
def experiments_results(experiment_id: Annotated[str, typer.Argument()], as_json: AsJson = False) -> None:
    """Per-variant CTR and conversion with intervals, lift, p-value, chance to beat control; SRM; verdict."""
    from nimbus.console import experiment_results
    from nimbus.experiments.service import results as results_of

    emit(results_of(get_settings(), experiment_id), as_json, experiment_results)


# ---- monitor ---------------------------------------------------------------------------
@monitor_app.command("drift")
def monitor_drift(
    model: Annotated[str | None, typer.Option(help="Registered model whose served versions are checked; "
                                                   "default: the recommender and every model predict served.")] = None,
    as_json: AsJson = False,
) -> None:
    """Check the served versions for drift now (as the scheduled monitor does): store and print the result."""
    from nimbus.console import drift_tables
    from nimbus.monitoring.drift import run_check, run_checks
    from nimbus.recommend.bundle import MODEL_NAME  # here, not at the top: numpy is no cost of every command

    settings = get_settings()
    emit(run_check(settings, model) if model else run_checks(settings, [MODEL_NAME]), as_json, drift_tables)


@monitor_app.command("traffic")
def monitor_traffic(
    window: Annotated[int, typer.Option(min=1, help="Seconds back from now.")] = 900,
    as_json: AsJson = False,
) -> None:
    """Requests, errors, degraded answers and latency percentiles per function (all processes)."""
    from nimbus.monitoring.traffic import summary

    report = summary(get_settings(), window_s=window, bucket_s=get_settings().traffic_bucket_s)
    emit(report, as_json, lambda r: _traffic_table(r, window))


def _traffic_table(report: dict[str, Any], window: int) -> RenderableType:
    from rich.table import Table

    table = Table(title=f"last {window} s")
    for column in ("function", "requests", "errors", "degraded", "req/s", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column)
    for name, f in report["functions"].items():
        table.add_row(name, str(f["requests"]), str(f["errors"]), str(f["degraded"]), fmt(f["rps"], ".1f"),
                      fmt(f["p50_ms"], ".2f"), fmt(f["p95_ms"], ".2f"), fmt(f["p99_ms"], ".2f"))
    return table


# ---- ops -------------------------------------------------------------------------------
def _parts_table(report: dict[str, Any], title: str) -> RenderableType:
    from rich.table import Table

    table = Table(title=title)
    for column in ("part", "items", "what", "bytes", "detail"):
        table.add_column(column, justify="right" if column in ("items", "bytes") else "left")
    for p in report["parts"].values():
        table.add_row(p["part"], str(p["items"]), p["unit"], f"{p['bytes']:,}", p["detail"])
    return table


@ops_app.command("backup")
def ops_backup(
    folder: Annotated[Path, typer.Argument(help="A new (or empty) folder for the backup.")],
    as_json: AsJson = False,
) -> None:
    """Back up Redis (every key and its expiry), MongoDB (every collection), the S3 buckets and MLflow."""
    from nimbus.ops.backup import backup

    emit(backup(get_settings(), folder), as_json,
         lambda m: _parts_table(m, f"backup in {folder} ({m['duration_s']:.1f} s)"))


@ops_app.command("restore")
def ops_restore(
    folder: Annotated[Path, typer.Argument(help="A folder written by `nimbus ops backup`.")],
    force: Annotated[bool, typer.Option(help="Overwrite stores that are not empty.")] = False,
    as_json: AsJson = False,
) -> None:
    """Restore a backup into empty stores (stop a local MLflow server first)."""
    from nimbus.ops.backup import restore

    emit(restore(get_settings(), folder, force=force), as_json, lambda r: _parts_table(
        r, f"restored {folder} (backup of {r['created_at']}, {r['duration_s']:.1f} s)"))

# ---- alerts ----------------------------------------------------------------------------
@alerts_app.command("list")
def alerts_list(
    state: Annotated[str | None, typer.Option(help="Only alerts in this state: firing or resolved.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Alerts to show.")] = 100,
    as_json: AsJson = False,
) -> None:
    """Stored alerts, firing first: state, kind, subject, since, last seen, count, summary."""
    from nimbus.alerts import list_alerts

    emit(list_alerts(get_settings(), state=state, limit=limit), as_json, _alerts_table)


def _alerts_table(rows: list[dict[str, Any]]) -> RenderableType:
    from rich.table import Table

    table = Table(title=f"alerts: {sum(a['state'] == 'firing' for a in rows)} firing")
    for column in ("state", "kind", "subject", "since", "last seen", "count", "summary"):
        table.add_column(column, overflow="fold")
    for a in rows:
        table.add_row(f"[red]{a['state']}[/red]" if a["state"] == "firing" else a["state"], a["kind"], a["subject"],
                      a["since"] or "-", a["last_seen"] or "-", str(a["count"]), a["summary"])
    return table


@alerts_app.command("evaluate")
def alerts_evaluate(as_json: AsJson = False) -> None:
    """Evaluate every alert source now and deliver what changed (the monitor does this on its schedule,
    after its drift check)."""
    from nimbus.alerts import evaluate

    result = evaluate(get_settings())
    skipped = f"; skipped (store down): {', '.join(result['skipped'])}" if result["skipped"] else ""
    emit(result, as_json, f"{result['changed']} changed, {result['delivered']} delivered, {result['failed']} failed"
                          f"{skipped}")


def main() -> None:
    """Entry point: run the CLI, printing Nimbus errors as one line."""
    from nimbus.console import quiet_libraries

    quiet_libraries()
    try:
        app()
    except NimbusError as exc:
        print(f"error: {exc}", file=sys.stderr)  # one line, never wrapped or decorated
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
