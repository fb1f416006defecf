"""Load and cold-start benchmark of the ``predict`` function, next to a hello-world and `mlflow models serve`.

    .venv/bin/python benchmarks/predict_load.py [--seconds 10] [--rate 1000] [--workers 2]

Starts its own Redis and MongoDB-wire server (loopback, free ports) and a SQLite MLflow in a
temporary folder; fits two churn models on the batch example data and registers them as a user
would get them: a logistic pipeline (StandardScaler + LogisticRegression, logged like the batch
examples) and a HistGradientBoosting winner registered by AutoML's own path (its ONNX export
checked against scikit-learn by ``nimbus.automl.export`` and logged beside it); both promoted
(audited). Then it serves, each with uvicorn and ``--workers`` workers: the ``predict`` function
(``functions.predict.handler:app``, the models preloaded), the FastAPI hello-world, and each model
through ``mlflow models serve --env-manager local`` (the user's alternative). `hey` (Debian package
`hey`, shared with benchmarks/recommend_load.py) sends single-record requests at a steady ``--rate``
and then as fast as it can (32 connections); the figures are printed side by side. Last, the cold
start of the predict handler: a new process imports it and answers one Lambda event (the model
loaded from the registry, checked and warmed on the way).

Goals (issue 15): at 1,000 requests/s, predict's p99 within 2x the hello-world's; predict's maximum
at least 3x `mlflow models serve`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "shared"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from recommend_load import load, serve, stop, wait_http  # noqa: E402 - the load generator and servers, shared

from nimbus.config import Settings  # noqa: E402
from nimbus.local.stack import LocalStack, free_port  # noqa: E402

KEY = "nimbus-local-key"


def register(settings: Settings) -> tuple[dict[str, str], dict]:
    """bench-lr (a logistic pipeline) and bench-hgb (an AutoML-registered HistGradientBoosting with its
    checked ONNX export), promoted; name -> version, and one record of their inputs."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from nimbus import governance
    from nimbus.automl.export import winner_to_onnx
    from nimbus.automl.profile import Profile
    from nimbus.automl.space import pipeline
    from nimbus.automl.tracking import register_winner
    from nimbus.batch.examples import FEATURES, make_records
    from nimbus.stores.registry import Registry

    table, y = make_records(20_000, seed=123)
    x = table.select(FEATURES).to_pandas().astype("float64")
    versions = {}
    lr = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=500))]).fit(x, y)
    with Registry.for_settings(settings).tracked_run("nimbus-predict-bench", "bench-lr") as run:
        versions["bench-lr"] = run.log_sklearn(lr, x.head(5), lr.predict_proba(x.head(5))[:, 1], "bench-lr",
                                               predict_fn="predict_proba")
    # AutoML's own pipeline (its preprocessing + HistGradientBoosting), export (checked) and registration
    profile = Profile("classification", len(x), numeric=list(FEATURES), classes=2)
    params = {"algorithm": "hist_gb", "learning_rate": 0.1, "max_leaf_nodes": 31, "min_samples_leaf": 20,
              "l2_regularization": 1e-3, "max_features": 1.0}
    hgb = pipeline(params, profile).fit(x, y)
    onnx = winner_to_onnx(hgb, "hist_gb", profile, x.iloc[:2000], seconds=300)
    if onnx.model is None:
        raise SystemExit(f"the ONNX export did not match: {onnx.error}")
    versions["bench-hgb"], _ = register_winner(
        settings, "bench-job", "bench-hgb", {"params": params}, hgb, x,
        {"metric": "roc_auc", "value": 0.0, "ci95": [0.0, 0.0]}, {"bench": True}, onnx.model)
    for name, version in versions.items():
        governance.promote(settings, name, version, reason="benchmark")
    return versions, {k: float(v) for k, v in x.iloc[0].items()}


COLD_START_PROBE = r"""
import json, time
t0 = time.perf_counter()
from functions.predict.handler import handler
t1 = time.perf_counter()
class Ctx:
    function_name = "predict"; memory_limit_in_mb = 2048; aws_request_id = "cold"
    invoked_function_arn = "arn:aws:lambda:us-east-1:0:function:predict"
    def get_remaining_time_in_millis(self): return 29000
answer = handler(json.loads(EVENT), Ctx())
t2 = time.perf_counter()
form = json.loads(answer["body"]).get("form") if answer["statusCode"] == 200 else answer["body"][:200]
print(json.dumps({"import_s": t1 - t0, "first_answer_s": t2 - t1, "status": answer["statusCode"], "form": form}))
"""


def cold_start(env: dict[str, str], model: str, record: dict, runs: int) -> list[dict]:
    body = json.dumps(record)
    event = {
        "version": "2.0", "routeKey": "POST /predict/{model}", "rawPath": f"/predict/{model}", "rawQueryString": "",
        "headers": {"host": "localhost", "content-type": "application/json", "x-api-key": KEY,
                    "content-length": str(len(body))},
        "pathParameters": {"model": model}, "body": body, "isBase64Encoded": False,
        "requestContext": {"http": {"method": "POST", "path": f"/predict/{model}", "sourceIp": "127.0.0.1",
                                    "protocol": "HTTP/1.1", "userAgent": "bench"},
                           "requestId": "cold", "routeKey": "POST /predict/{model}", "stage": "$default"},
    }
    probe = f"EVENT = {json.dumps(json.dumps(event))}\n{COLD_START_PROBE}"
    results = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", probe], env={**env, "PYTHONPATH": f"{ROOT}:{ROOT / 'shared'}",
                                                                   "NIMBUS_PREDICT_PRELOAD": ""},
                              cwd=ROOT, capture_output=True, text=True, timeout=180)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"cold start probe failed: {done.stderr[-2000:]}")
        results.append({**json.loads(done.stdout.strip().splitlines()[-1]), "process_s": wall})
    return results


def post_once(url: str, body: bytes, headers: dict[str, str]) -> dict:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per load level and endpoint")
    parser.add_argument("--rate", type=int, default=1000, help="the steady level (requests/s)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers of every server")
    parser.add_argument("--cold-runs", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("hey") is None:
        raise SystemExit("hey not found: apt-get install hey")

    home = Path(tempfile.mkdtemp(prefix="nimbus-bench-"))
    env = {**os.environ, "NIMBUS_HOME": str(home), "NIMBUS_PROJECT_ROOT": str(ROOT),
           "NIMBUS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
           "NIMBUS_MONGO_URL": f"mongodb://127.0.0.1:{free_port()}/", "NIMBUS_MLFLOW_TRACKING_URI": "",
           "NIMBUS_LOG_LEVEL": "WARNING", "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_LOGGING_LEVEL": "WARNING"}
    os.environ.update(env)
    settings = Settings()
    stack = LocalStack(settings, ephemeral=True)
    stack.up(["redis", "mongodb"])
    servers: list[subprocess.Popen] = []
    try:
        t = time.perf_counter()
        versions, record = register(settings)
        print(f"setup: bench-lr v{versions['bench-lr']} and bench-hgb v{versions['bench-hgb']} (AutoML path, ONNX "
              f"checked) registered and promoted in {time.perf_counter() - t:.1f} s")
        body = json.dumps(record).encode()
        body_file = home / "record.json"
        body_file.write_bytes(body)
        mlflow_body = home / "mlflow-record.json"
        mlflow_body.write_text(json.dumps({"dataframe_records": [record]}))

        uvicorn = [sys.executable, "-m", "uvicorn", "--workers", str(args.workers), "--log-level", "warning",
                   "--no-access-log", "--host", "127.0.0.1"]
        predict_port, hello_port = free_port(), free_port()
        predict_env = {**env, "PYTHONPATH": f"{ROOT}:{ROOT / 'shared'}",
                       "NIMBUS_PREDICT_PRELOAD": "bench-lr,bench-hgb"}
        servers.append(serve([*uvicorn, "functions.predict.handler:app", "--port", str(predict_port)],
                             predict_env, f"http://127.0.0.1:{predict_port}/openapi.json"))
        servers.append(serve([*uvicorn, "--app-dir", str(ROOT / "benchmarks"), "hello_app:app", "--port",
                              str(hello_port)], env, f"http://127.0.0.1:{hello_port}/hello"))
        mlflow_env = {**env, "MLFLOW_TRACKING_URI": settings.tracking_uri, "MLFLOW_REGISTRY_URI": settings.registry_uri,
                      "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"}  # it runs `uvicorn` by name
        mlflow_ports = {}
        for name, version in versions.items():
            mlflow_ports[name] = free_port()
            log = home / f"mlflow-serve-{name}.log"
            with log.open("w") as sink:
                servers.append(subprocess.Popen(
                    [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}/{version}",
                     "--env-manager", "local", "-h", "127.0.0.1", "-p", str(mlflow_ports[name]),
                     "-w", str(args.workers)], env=mlflow_env, cwd=home, stdout=sink, stderr=sink,
                    start_new_session=True))
            try:
                wait_http(f"http://127.0.0.1:{mlflow_ports[name]}/ping", timeout_s=180)
            except SystemExit:
                print(log.read_text()[-3000:], file=sys.stderr)
                raise
        forms = {}
        for name in versions:  # every worker warm, and the answers shown once
            for _ in range(50):
                answer = post_once(f"http://127.0.0.1:{predict_port}/predict/{name}", body, {"X-API-Key": KEY})
                post_once(f"http://127.0.0.1:{mlflow_ports[name]}/invocations", mlflow_body.read_bytes(), {})
            forms[name] = answer["form"]
            print(f"  {name}: predict serves the {answer['form']} form; answer {answer['predictions'][0]}")

        post = ("-m", "POST", "-T", "application/json", "-D")
        endpoints = [("hello-world", f"http://127.0.0.1:{hello_port}/hello", ())]
        for name in versions:
            endpoints.append((f"predict {name}", f"http://127.0.0.1:{predict_port}/predict/{name}",
                              (*post, str(body_file), "-H", f"X-API-Key: {KEY}")))
            endpoints.append((f"mlflow {name}", f"http://127.0.0.1:{mlflow_ports[name]}/invocations",
                              (*post, str(mlflow_body))))
        print(f"\n{'endpoint':<22}{'target/s':>9}{'got/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}"
              f"{'p99 x hello':>13}")
        results: dict[tuple[str, str], dict] = {}
        for level in (args.rate, None):
            label = str(level) if level else "max"
            for name, url, options in endpoints:
                r = load([url] * 4, level, args.seconds, connections=20 if level else 32, options=options)
                results[(name, label)] = r
                ratio = "" if name == "hello-world" else f"{r['p99'] / results[('hello-world', label)]['p99']:.1f}"
                print(f"{name:<22}{label:>9}{r['rps']:>9.0f}{r['p50']:>9.2f}{r['p95']:>9.2f}{r['p99']:>9.2f}"
                      f"{r['errors']:>8}{ratio:>13}")
        print()
        rate = str(args.rate)
        for name in versions:
            p99 = results[(f"predict {name}", rate)]["p99"] / results[("hello-world", rate)]["p99"]
            most = results[(f"predict {name}", "max")]["rps"] / results[(f"mlflow {name}", "max")]["rps"]
            print(f"{name} ({forms[name]}): p99 at {rate}/s = {p99:.1f}x hello-world's (goal <= 2x); maximum = "
                  f"{most:.1f}x mlflow models serve's (goal >= 3x)")

        runs = cold_start(env, "bench-hgb", record, args.cold_runs)
        print(f"\ncold start of the predict handler over {len(runs)} new processes (interpreter + import + model "
              "load from the registry, trust check, warm-up + first answer), bench-hgb:")
        for n, r in enumerate(runs, 1):
            print(f"  run {n}: process {r['process_s']:.3f} s = import {r['import_s']:.3f} s + first answer "
                  f"{r['first_answer_s']:.3f} s (+ interpreter); HTTP {r['status']}, {r['form']} form")
        walls = [r["process_s"] for r in runs]
        print(f"  median {statistics.median(walls):.3f} s, best {min(walls):.3f} s, worst {max(walls):.3f} s")
    finally:
        for proc in servers:
            stop(proc)
        stack.down()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
