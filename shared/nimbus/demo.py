"""`make demo`: the three jobs on the local stack, end to end, as a user would run them.

Stack up; a synthetic interaction log into the S3 data bucket; the scheduled `features`
function invoked with an EventBridge event; a ranker trained, registered in MLflow and
promoted; recommendations and interactions through the local gateway, exactly as API
Gateway would route them; an A/B test of a challenger against the champion with simulated
users, and its results; a drift check of what was served; a file dropped in S3 and scored
by the batch function on Spark; a short AutoML job and its leaderboard; health; the
dashboard's URL; stack down (only what the demo started), unless ``--keep``: then the
stack stays up and the gateway keeps serving the dashboard until Ctrl-C.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from nimbus.config import Settings
from nimbus.console import print_health, progress, status_table
from nimbus.errors import NimbusError
from nimbus.local.gateway import Gateway, GatewayOptions, scheduled_event, serving
from nimbus.local.invoke import Invoker
from nimbus.local.serverless import load_project
from nimbus.local.stack import LocalStack


def _recommendation_table(body: dict[str, Any], title: str) -> Table:
    table = Table(title=title, caption=f"model v{body['model_version']}, {body['strategy']}"
                                       f"{', DEGRADED' if body['degraded'] else ''}")
    for column in ("#", "item", "category", "score"):
        table.add_column(column)
    for n, item in enumerate(body["items"], 1):
        table.add_row(str(n), item["item_id"], item["category"], f"{item['score']:.3f}")
    return table


def _batch(settings: Settings, out: Console) -> None:
    """Register the example churn models, drop a file, wait for the drop folder to score it."""
    from nimbus.batch.examples import train_models, write_records
    from nimbus.stores.documents import Collections, DocumentStore

    with out.status("training churn-lr and churn-hgb, registering them as champions..."):
        versions = train_models(settings, n=20_000)
    out.print(f"registered: {', '.join(f'{n} v{v}' for n, v in versions.items())}")
    uri = f"s3://{settings.data_bucket}/{settings.drop_prefix}demo/customers-{int(time.time())}.parquet"
    write_records(settings, uri, 20_000, bad_rows=40, seed=int(time.time()) % 1000)
    out.print(f"dropped {uri} (20,000 records, 40 of them broken on purpose)")
    runs = DocumentStore.for_settings(settings).collection(Collections.BATCH_RUNS)
    deadline = time.monotonic() + 240
    with out.status("S3 -> SQS -> batch function -> Spark..."):
        while time.monotonic() < deadline:
            run = runs.find_one({"input.uri": uri, "status": {"$in": ["succeeded", "failed"]}})
            if run:
                break
            time.sleep(0.5)
        else:
            raise NimbusError("the dropped file was not scored within 4 minutes")
    counts = run["counts"]
    out.print(f"run {run['_id']}: {run['status']}; {counts['records']:,} records = {counts['scored']:,} scored + "
              f"{counts['quarantined']:,} quarantined; failures by rule: "
              + ", ".join(f"{r} {c}" for r, c in run["failures"].items() if c))
    out.print(f"results: {run['outputs']['results_uri']}/   report: {run.get('report_uri')}")


def demo_key() -> str:
    """The key the demo calls the APIs with: NIMBUS_DEMO_KEY, else the local stack's key."""
    from nimbus.apikeys import LOCAL_KEY

    return os.environ.get("NIMBUS_DEMO_KEY") or LOCAL_KEY


def _experiment(settings: Settings, out: Console, http: httpx.Client, challenger: str, users: list[str]) -> None:
    """Champion vs a challenger version, 50/50 by user; simulated users click the challenger's
    answers more often (a planted effect the statistics should find)."""
    from nimbus.console import experiment_results

    key = {"X-API-Key": demo_key()}
    spec = {"name": "demo-challenger", "metric": "ctr",
            "variants": [{"name": "control", "model": "champion", "weight": 0.5},
                         {"name": "treatment", "model": challenger, "weight": 0.5}]}
    created = http.post("/experiments", json=spec, headers=key)
    created.raise_for_status()
    experiment = http.post(f"/experiments/{created.json()['id']}/start", headers=key)
    experiment.raise_for_status()
    exp_id = experiment.json()["id"]
    out.print(f"experiment {exp_id} running: control = champion, treatment = version {challenger} (50/50 by user)")
    rng = random.Random(11)
    click_p = {"control": 0.10, "treatment": 0.20}
    events = []
    with out.status(f"{len(users)} simulated users ask for recommendations and click..."):
        for user in users:
            body = http.get(f"/recommendations/{user}", params={"k": 5}).json()
            if rng.random() < click_p.get(body.get("variant") or "control", 0.1):
                events.append({"event_id": f"demo-click-{body['request_id']}", "user_id": user, "type": "click",
                               "item_id": body["items"][0]["item_id"], "request_id": body["request_id"]})
        time.sleep(2 * settings.exposure_flush_s)  # the serving process writes its exposures each flush
        for start in range(0, len(events), 500):
            http.post("/events", json={"events": events[start:start + 500]}, headers=key).raise_for_status()
    results = http.get(f"/experiments/{exp_id}/results", headers=key)
    results.raise_for_status()
    experiment_results(results.json())
    http.post(f"/experiments/{exp_id}/stop", headers=key).raise_for_status()
    out.print(f"experiment {exp_id} stopped: results frozen in MongoDB, audited")


def _automl(settings: Settings, out: Console, budget_s: float) -> None:
    """A short AutoML job on a churn table: searched on Ray, tracked in MLflow, registered."""
    from rich.table import Table

    from nimbus.audit import actor
    from nimbus.automl.jobs import JobRequest, submit
    from nimbus.automl.runner import run_once
    from nimbus.batch.examples import make_records

    with tempfile.TemporaryDirectory() as tmp:
        table, y = make_records(3000, seed=17)
        frame = table.drop_columns(["record_id"]).to_pandas()
        frame["churned"] = y
        path = Path(tmp) / "churn.csv"
        frame.to_csv(path, index=False)
        job = submit(settings, JobRequest(dataset=str(path), target="churned", budget_s=budget_s),
                     owner=actor(settings), trusted_paths=True)
        out.print(f"job {job['_id']}: {job['profile']['task']} on {job['profile']['rows']:,} rows, "
                  f"metric {job['metric']}, budget {budget_s:.0f} s")
        with out.status("Ray Tune searching scikit-learn algorithms, every trial an MLflow run..."):
            doc = run_once(settings, job["_id"])  # starts this process's Ray and shuts it down with the job
    leaderboard = Table(title=f"leaderboard ({doc['trials']} configurations in {doc['elapsed_s']:.0f} s)")
    for column in ("#", "algorithm", doc["metric"], "complete"):
        leaderboard.add_column(column)
    for row in doc["leaderboard"][:5]:
        leaderboard.add_row(str(row["rank"]), row["algorithm"], f"{row['score']:.4f}",
                            "yes" if row["complete"] else "early stop")
    out.print(leaderboard)
    test = doc["test"]
    out.print(f"winner {doc['winner']['algorithm']}: held-out {test['metric']} {test['value']:.4f} "
              f"(95% CI {test['ci95'][0]:.4f}-{test['ci95'][1]:.4f}); registered {doc['model']['name']} "
              f"v{doc['model']['version']}; report {doc['exports']['report_html']}")


def run_demo(settings: Settings, out: Console, keep: bool = False, users: int = 2000, items: int = 1000,
             automl_budget_s: float = 45) -> None:
    from nimbus.console import drift_tables
    from nimbus.monitoring.drift import run_check
    from nimbus.recommend.bundle import MODEL_NAME
    from nimbus.recommend.data import generate, load_dataset
    from nimbus.recommend.models import register
    from nimbus.recommend.pipeline import default_sources
    from nimbus.recommend.publish import write_dataset
    from nimbus.recommend.training import train

    stack = LocalStack(settings)
    already = {r.name for r in stack.status() if r.up and r.managed}
    out.rule("1. local stack up")
    with out.status("starting Redis, MongoDB-wire, S3/SQS, MLflow..."):
        rows = stack.up()
    out.print(status_table(rows, "local stack"))
    started = [r.name for r in rows if r.name not in already]
    project = load_project(settings.project_root)
    try:
        out.rule("2. interaction logs into the S3 data bucket")
        dataset = generate(users, items, days=45)
        where = write_dataset(dataset, settings)
        out.print(f"{len(dataset.interactions):,} events of {users:,} users on {items:,} items -> {where}")

        out.rule("3. the scheduled `features` function (EventBridge event)")
        invoker = Invoker(project)
        fn = project.function("features")
        result = invoker.invoke("features", scheduled_event(fn, fn.schedules[0], project.region, 0))
        invoker.close()
        if not result.ok:
            raise NimbusError(f"features failed: {result.payload['errorMessage']}")
        answer = result.payload
        out.print(f"feature version {answer['version']}: {answer['users']:,} users, {answer['items']:,} items "
                  f"in {answer['seconds']} s (swapped in; previous: {answer['previous']})")

        out.rule("4. train, register in MLflow, promote to champion")
        status, say = progress()
        with status:
            logs, catalogue = default_sources(settings)
            trained = train(load_dataset(logs, catalogue), progress=say)
            version = register(trained, settings, promote=True)
            # The challenger is the same ranker registered again: the simulated users below are
            # told to prefer it (a planted effect), which is what the A/B statistics must find.
            challenger = register(trained, settings, promote=False)
        m = trained.metrics
        out.print(f"nimbus-recommender v{version} is live: recall@10 {m['recall_at_10']:.3f} "
                  f"(popularity {m['popular_recall_at_10']:.3f}), NDCG@10 {m['ndcg_at_10']:.3f} "
                  f"(popularity {m['popular_ndcg_at_10']:.3f}); challenger v{challenger} registered")

        gateway = Gateway(project, settings, GatewayOptions(schedules=False, watch=True))
        port = settings.gateway_port if keep else 0
        with serving(gateway.app, settings.gateway_host, port) as base, \
                httpx.Client(base_url=base, timeout=30) as http:
            out.rule("5. recommendations through the local gateway")
            user = "u1"
            first = http.get(f"/recommendations/{user}", params={"k": 5}).json()
            out.print(_recommendation_table(first, f"GET /recommendations/{user}?k=5"))
            out.print(_recommendation_table(http.get("/recommendations/newcomer", params={"k": 3}).json(),
                                            "GET /recommendations/newcomer?k=3 (no history)"))
            category = first["items"][-1]["category"]
            clicked = http.get(f"/recommendations/{user}", params={"k": 3, "category": category}).json()["items"]
            now = time.time()
            batch = {"events": [{"event_id": f"demo-{now}-{n}", "user_id": user, "item_id": item["item_id"],
                                 "type": "click"} for n, item in enumerate(clicked)]}
            ingest = http.post("/events", json=batch, headers={"X-API-Key": demo_key()}).json()
            out.print(f"POST /events: {len(clicked)} clicks by {user} in {category} -> {ingest}")
            after = http.get(f"/recommendations/{user}", params={"k": 5}).json()
            out.print(_recommendation_table(after, f"GET /recommendations/{user}?k=5 (after the clicks)"))

            out.rule("6. an A/B test: the challenger against the champion")
            _experiment(settings, out, http, challenger, [f"u{n}" for n in range(2, min(users, 602))])

            out.rule("7. drift: what was served against what the champion was trained on")
            drift_tables(run_check(settings, MODEL_NAME))

            out.rule("8. batch predictions: a file dropped in S3, scored on Spark by the batch function")
            _batch(settings, out)

            out.rule("9. AutoML: a dataset in, a searched, tracked, registered model out")
            _automl(settings, out, automl_budget_s)

            health = http.get("/health", headers={"X-API-Key": demo_key()})  # the operator sees addresses
            out.rule("10. the health function and the dashboard")
            print_health(health.json())
            if health.status_code != 200:
                raise NimbusError(f"health answered {health.status_code}: some store is down")
            out.print(f"dashboard: {base}/dashboard#key={demo_key()}  (traffic, latency, A/B results, drift, "
                      "model versions; the fragment hands the page the local read key)")
            if keep:
                out.print("--keep: the stack stays up and the gateway serves here until Ctrl-C")
                _wait_for_interrupt()
    finally:
        if not keep:
            out.rule("11. local stack down")
            stopped = stack.down(started) if started else []
            out.print(f"stopped: {', '.join(stopped) or 'nothing (it was already running before the demo)'}")


def _wait_for_interrupt() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
