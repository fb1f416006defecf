"""`make demo`: the three jobs on the local stack, end to end, as a user would run them.

Stack up; a synthetic interaction log into the S3 data bucket; the scheduled `features`
function invoked with an EventBridge event; a ranker trained, registered in MLflow and
promoted; recommendations and interactions through the local gateway, exactly as API
Gateway would route them; an A/B test of a challenger against the champion with simulated
users, and its results; a drift check of what was served; a file dropped in S3 and scored
by the batch function on Spark; a short AutoML job and its leaderboard; its winner served by
the `predict` function, then two more AutoML winners rolled out as canaries — one trained on a
stale table, rolled back by its guardrails, one good, stepped up to 100 %; health; the
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


CHURN_CSV = "churn.csv"  # every AutoML job of the demo trains on a file of this name: one model, automl-churn


def _churn_csv(folder: Path, seed: int, shift: float = 0.0) -> Path:
    """A churn table as a user would upload it; ``shift`` moves the first five features (a stale table)."""
    from nimbus.batch.examples import make_records

    table, y = make_records(3000, seed=seed)
    frame = table.drop_columns(["record_id"]).to_pandas()
    for column in ("f0", "f1", "f2", "f3", "f4"):
        frame[column] += shift
    frame["churned"] = y
    path = folder / f"{seed}" / CHURN_CSV
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def _automl_job(settings: Settings, out: Console, path: Path, budget_s: float, what: str) -> dict[str, Any]:
    from nimbus.audit import actor
    from nimbus.automl.jobs import JobRequest, submit
    from nimbus.automl.runner import run_once

    job = submit(settings, JobRequest(dataset=str(path), target="churned", budget_s=budget_s, name="churn"),
                 owner=actor(settings), trusted_paths=True)
    out.print(f"job {job['_id']} ({what}): {job['profile']['task']} on {job['profile']['rows']:,} rows, "
              f"metric {job['metric']}, budget {budget_s:.0f} s")
    with out.status("Ray Tune searching scikit-learn algorithms, every trial an MLflow run..."):
        return run_once(settings, job["_id"])  # starts this process's Ray and shuts it down with the job


def _automl(settings: Settings, out: Console, folder: Path, budget_s: float) -> dict[str, Any]:
    """A short AutoML job on a churn table: searched on Ray, tracked in MLflow, registered."""
    doc = _automl_job(settings, out, _churn_csv(folder, seed=17), budget_s, "the first model")
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
    return doc


def _live_records(folder: Path, n: int) -> list[dict[str, Any]]:
    """Today's traffic: records like the first table's (as read back from a CSV, the types training saw)."""
    import pandas as pd

    frame = pd.read_csv(_churn_csv(folder, seed=99)).drop(columns=["churned"]).head(n)
    return frame.to_dict("records")


def _serve_and_roll_out(settings: Settings, out: Console, http: httpx.Client, folder: Path, first: dict[str, Any],
                        budget_s: float) -> None:
    """The loop: the AutoML winner served by predict; two more winners rolled out as canaries, judged."""
    from nimbus import governance

    name, version = first["model"]["name"], first["model"]["version"]
    governance.promote(settings, name, version, reason="demo: the first AutoML winner")
    key = {"X-API-Key": demo_key()}
    records = _live_records(folder, 400)
    answer = http.post(f"/predict/{name}", json=records[:3], headers=key)
    if answer.status_code != 200:
        raise NimbusError(f"predict answered {answer.status_code}: {answer.text[:300]}")
    body = answer.json()
    out.print(f"POST /predict/{name} (3 records): v{body['version']} @{body['alias']}, {body['form']} form")
    table = Table()
    for column in ("record", "label", "probabilities"):
        table.add_column(column)
    for n, p in enumerate(body["predictions"]):
        table.add_row(str(n), str(p["label"]), ", ".join(f"{k}: {v:.3f}" for k, v in p["probabilities"].items()))
    out.print(table)
    stale = _automl_job(settings, out, _churn_csv(folder, seed=23, shift=1.5), budget_s, "a candidate trained on "
                        "a stale table: its first five features moved")
    _roll_out(settings, out, http, name, stale["model"]["version"], records)
    good = _automl_job(settings, out, _churn_csv(folder, seed=29), budget_s, "a candidate trained on fresh data")
    _roll_out(settings, out, http, name, good["model"]["version"], records)


def _roll_out(settings: Settings, out: Console, http: httpx.Client, name: str, version: str,
              records: list[dict[str, Any]]) -> None:
    """A canary rollout under steady traffic, judged after each burst until it completes or rolls back."""
    from nimbus.serving import rollout

    # The demo's patience: a step is judged on 150 candidate answers (and samples), not on minutes; and the
    # p99 of 150 answers on a laptop busy with the demo itself is its slowest one: 25 ms forgiven, not 5.
    quick = settings.model_copy(update={"rollout_min_requests": 150, "rollout_min_step_s": 0,
                                        "drift_min_samples": 150, "rollout_p99_slack_ms": 25.0})
    started = rollout.start(quick, name, version, "10%", reason="demo: canary of the new AutoML winner")
    out.print(f"nimbus models rollout {name} {version} --canary 10%: {started['id']} against champion "
              f"v{started['champion']}, steps {' -> '.join(f'{s:g}%' for s in started['steps'])}")
    key = {"X-API-Key": demo_key()}
    sent = failed = 0
    rng = random.Random(version)
    for _ in range(400):
        for _ in range(100):
            record = records[rng.randrange(len(records))]
            answer = http.post(f"/predict/{name}", json=record,
                               headers={**key, "X-Routing-Key": f"customer-{rng.randrange(5000)}"})
            sent += 1
            failed += answer.status_code != 200
        time.sleep(settings.traffic_flush_s * 1.5)  # the gateway's counts and samples reach Redis each flush
        decision = rollout.judge(quick, name, who="demo")[0]
        if decision["action"] != "hold":
            guards = ", ".join(f"{g['name']} {g['status']}" + (f" ({g['value']:.3g} / {g['limit']:.3g})"
                                                               if g["value"] is not None and g["limit"] else "")
                               for g in decision["guardrails"])
            out.print(f"  judged: {decision['action']}: {decision['reason'].split(': ', 1)[0]} [{guards}]")
        if decision["state"] != "running":
            break
    else:
        raise NimbusError(f"rollout {started['id']} was still running after {sent} requests")
    out.print(f"  {decision['state']}: {decision['reason']}")
    out.print(f"  {sent:,} requests during the rollout, {failed} failed")
    if failed:
        raise NimbusError(f"{failed} of {sent} predict requests failed during the rollout")


def run_demo(settings: Settings, out: Console, keep: bool = False, users: int = 2000, items: int = 1000,
             automl_budget_s: float = 45, candidate_budget_s: float = 15) -> None:
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

            with tempfile.TemporaryDirectory() as tmp:
                out.rule("9. AutoML: a dataset in, a searched, tracked, registered model out")
                first = _automl(settings, out, Path(tmp), automl_budget_s)

                out.rule("10. the winner served by predict; new winners rolled out as canaries, judged")
                _serve_and_roll_out(settings, out, http, Path(tmp), first, candidate_budget_s)

            health = http.get("/health", headers={"X-API-Key": demo_key()})  # the operator sees addresses
            out.rule("11. the health function and the dashboard")
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
            out.rule("12. local stack down")
            stopped = stack.down(started) if started else []
            out.print(f"stopped: {', '.join(stopped) or 'nothing (it was already running before the demo)'}")


def _wait_for_interrupt() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
