"""`make demo`: the main job on the local stack, end to end, as a user would run it.

Stack up; a synthetic interaction log into the S3 data bucket; the scheduled `features`
function invoked with an EventBridge event; a ranker trained, registered in MLflow and
promoted; recommendations, interactions and health through the local gateway, exactly
as API Gateway would route them; stack down (only what the demo started).
"""

from __future__ import annotations

import time
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


def run_demo(settings: Settings, out: Console, keep: bool = False, users: int = 2000, items: int = 1000) -> None:
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
        m = trained.metrics
        out.print(f"nimbus-recommender v{version} is live: recall@10 {m['recall_at_10']:.3f} "
                  f"(popularity {m['popular_recall_at_10']:.3f}), NDCG@10 {m['ndcg_at_10']:.3f} "
                  f"(popularity {m['popular_ndcg_at_10']:.3f})")

        out.rule("5. recommendations through the local gateway")
        gateway = Gateway(project, settings, GatewayOptions(schedules=False, watch=True))
        with serving(gateway.app) as base, httpx.Client(base_url=base, timeout=30) as http:
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
            ingest = http.post("/events", json=batch).json()
            out.print(f"POST /events: {len(clicked)} clicks by {user} in {category} -> {ingest}")
            after = http.get(f"/recommendations/{user}", params={"k": 5}).json()
            out.print(_recommendation_table(after, f"GET /recommendations/{user}?k=5 (after the clicks)"))

            out.rule("6. batch predictions: a file dropped in S3, scored on Spark by the batch function")
            _batch(settings, out)
            health = http.get("/health")
        out.rule("7. the health function")
        print_health(health.json())
        if health.status_code != 200:
            raise NimbusError(f"health answered {health.status_code}: some store is down")
    finally:
        if not keep:
            out.rule("8. local stack down")
            stopped = stack.down(started) if started else []
            out.print(f"stopped: {', '.join(stopped) or 'nothing (it was already running before the demo)'}")
