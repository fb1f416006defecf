"""Load, cold-start and quality benchmark of the recommendation API.

    .venv/bin/python benchmarks/recommend_load.py [--seconds 10] [--levels 1000,2000,3000,4000,5000,6000] [--cluster]

Starts its own Redis and MongoDB (loopback, free ports) and a SQLite MLflow in a temporary folder,
generates a synthetic log (5,000 users, 2,000 items), computes and publishes features,
trains, registers and promotes a ranker, then serves it with `nimbus recommend serve`
(uvicorn, 2 workers) next to a FastAPI hello-world served the same way. `hey` (Debian
package `hey`) drives a steady request rate at each level — eight hey processes, each on
another user (other users at each level), their per-request latencies merged — and the figures are printed side by
side so the ratio to the hello-world is visible. Then it measures cold start (a new
process: import the `recommend` handler, load the model and features, answer one
request) and prints the offline quality figures.

``--profile`` then runs py-spy (``pip install -e '.[dev]'``) on the recommend workers under maximum
load and prints the top functions; the cold start is printed next to a bare
``python -c "import fastapi, redis, numpy"`` measured in the same run, with the ratio.

Goals (issue 16): at max, recommend >= 0.5x the hello-world's rate; at 1,000/s its p99 <= 2x the
hello-world's, no errors; cold start <= 1.5x the bare process. Goals (issue 3): at 1,000 requests/s
p99 <= 10 ms with no errors; the highest level sustained with p99 <= 50 ms >= 4,000 requests/s;
cold start <= 1.0 s.

``--cluster`` also starts a 3-master Redis Cluster on loopback (nimbus.local.redis_cluster),
publishes the same features and model there, serves a second `nimbus recommend serve` pointed at
it (``NIMBUS_REDIS_URL=redis+cluster://...``) and drives it at every level right after the single
Redis one, printing the cluster's rate as a multiple of the single Redis's (goal, issue 16: at
``max``, >= 0.8x).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "shared"))

from nimbus.config import Settings  # noqa: E402
from nimbus.local.stack import LocalStack, free_port  # noqa: E402

HEY_PROCESSES = 8  # each on another user (hey takes one URL): 8 users per level, others at the next


def wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer in {timeout_s} s")


def load(urls: list[str], rate: int | None, seconds: float, connections: int = 20,
         options: tuple[str, ...] = ()) -> dict[str, float]:
    """Run one hey per URL at once (rate split evenly); merge their per-request latencies.

    ``options``: more hey flags (a POST: ``-m POST -D body.json -T application/json -H ...``)."""
    per = max(1, connections // len(urls))
    procs = []
    for url in urls:
        cmd = ["hey", "-z", f"{seconds}s", "-c", str(per), "-o", "csv", "-t", "5", *options]
        if rate:
            cmd += ["-q", str(max(1, round(rate / len(urls) / per)))]
        procs.append(subprocess.Popen([*cmd, url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
    latencies, errors = [], 0
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        for row in csv.DictReader(io.StringIO(out)):
            latencies.append(float(row["response-time"]))
            if row["status-code"] != "200":
                errors += 1
    latencies.sort()
    n = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(n - 1, int(p * n))] * 1000 if n else float("nan")

    return {"rps": n / seconds, "p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99), "errors": errors, "n": n}


def profile(pid: int, seconds: float, out: Path) -> None:
    """py-spy (``pip install -e '.[dev]'``) on a server and its workers for ``seconds``: collapsed stacks to ``out``."""
    spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if spy is None:
        return
    subprocess.run([spy, "record", "--subprocesses", "--nonblocking", "-p", str(pid), "-d", str(int(seconds)),
                    "-r", "250", "-f", "raw", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)


def profile_summary(collapsed: Path, top: int = 15) -> str:
    """The top functions of a py-spy collapsed profile: by own samples and by samples under them."""
    own, under, total = Counter(), Counter(), 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f.split(" (")[0] + " (" + f.rsplit("/", 1)[-1] if " (" in f else f for f in stack.split(";")[1:]]
        n = int(count)
        total += n
        if frames:
            own[frames[-1]] += n
        for frame in set(frames):
            under[frame] += n
    if not total:
        return "  (no samples: py-spy missing or not permitted)"
    rows = [f"  {total:,} samples over the workers; own time:"]
    rows += [f"  {100 * n / total:6.1f}%  {name}" for name, n in own.most_common(top)]
    rows.append("  total time (the function and what it calls):")
    rows += [f"  {100 * n / total:6.1f}%  {name}" for name, n in under.most_common(top)]
    return "\n".join(rows)


def serve(cmd: list[str], env: dict[str, str], url: str) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_http(url)
    return proc


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, 9)


BARE_IMPORTS = "import fastapi, redis, numpy"
COLD_START_PROBE = r"""
import json, time
t0 = time.perf_counter()
from functions.recommend.handler import handler
t1 = time.perf_counter()
event = json.loads(EVENT)
class Ctx:
    function_name = "recommend"; memory_limit_in_mb = 1024; aws_request_id = "cold"
    invoked_function_arn = "arn:aws:lambda:us-east-1:0:function:recommend"
    def get_remaining_time_in_millis(self): return 10000
answer = handler(event, Ctx())
t2 = time.perf_counter()
import sys
heavy = sorted(m for m in ("sklearn", "pandas", "mlflow", "pyspark", "ray", "airflow", "boto3") if m in sys.modules)
print(json.dumps({"import_s": t1 - t0, "first_answer_s": t2 - t1, "status": answer["statusCode"], "heavy": heavy}))
"""


def cold_start(env: dict[str, str], runs: int) -> list[dict]:
    event = {
        "version": "2.0", "routeKey": "GET /recommendations/{user_id}", "rawPath": "/recommendations/u1",
        "rawQueryString": "k=10", "headers": {"host": "localhost"}, "queryStringParameters": {"k": "10"},
        "pathParameters": {"user_id": "u1"}, "isBase64Encoded": False,
        "requestContext": {"http": {"method": "GET", "path": "/recommendations/u1", "sourceIp": "127.0.0.1",
                                    "protocol": "HTTP/1.1", "userAgent": "bench"},
                           "requestId": "cold", "routeKey": "GET /recommendations/{user_id}", "stage": "$default"},
    }
    probe = f"EVENT = {json.dumps(json.dumps(event))}\n{COLD_START_PROBE}"
    results = []
    for _ in range(runs):
        start = time.perf_counter()  # the baseline, interleaved: a bare process importing the three big libraries
        subprocess.run([sys.executable, "-c", BARE_IMPORTS], env=env, cwd=ROOT, check=True, timeout=120)
        bare = time.perf_counter() - start
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", probe], env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"cold start probe failed: {done.stderr[-2000:]}")
        results.append({**json.loads(done.stdout.strip().splitlines()[-1]), "process_s": wall, "bare_s": bare})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per load level")
    parser.add_argument("--levels", default="1000,2000,3000,4000,5000,6000")
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--profile", action="store_true",
                        help="after the levels, py-spy the recommend workers under maximum load and print the top")
    parser.add_argument("--cluster", action="store_true", help="also serve from a 3-master Redis Cluster, side by side")
    args = parser.parse_args()
    if shutil.which("hey") is None:
        raise SystemExit("hey not found: apt-get install hey")
    levels = [int(x) for x in args.levels.split(",")]

    home = Path(tempfile.mkdtemp(prefix="nimbus-bench-"))
    env = {**os.environ, "NIMBUS_HOME": str(home), "NIMBUS_PROJECT_ROOT": str(ROOT),
           "NIMBUS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "NIMBUS_MLFLOW_TRACKING_URI": "",
           "NIMBUS_MONGO_URL": f"mongodb://127.0.0.1:{free_port()}/",  # a promotion is audited there
           "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_LOGGING_LEVEL": "WARNING"}
    os.environ.update(env)
    settings = Settings()
    stack = LocalStack(settings, ephemeral=True)
    stack.up(["redis", "mongodb"])
    servers: list[subprocess.Popen] = []
    cluster = None
    try:
        from nimbus.recommend.data import generate
        from nimbus.recommend.featurize import compute_features
        from nimbus.recommend.models import register
        from nimbus.recommend.pipeline import publish_features
        from nimbus.recommend.training import train
        from nimbus.stores.redis.features import FeatureStore

        t = time.perf_counter()
        dataset = generate(args.users, args.items)
        result = train(dataset)
        publish_features(FeatureStore.for_settings(settings), compute_features(dataset))
        version = register(result, settings, promote=True)
        print(f"setup: {len(dataset.interactions):,} events, {args.users:,} users, {args.items:,} items; "
              f"model v{version} trained, registered and live in {time.perf_counter() - t:.1f} s\n")
        targets = {"recommend": env}
        if args.cluster:
            from nimbus.local.redis_cluster import LocalRedisCluster
            from nimbus.recommend.models import publish

            cluster = LocalRedisCluster(home / "redis-cluster")
            cluster_env = {**env, "NIMBUS_REDIS_URL": cluster.start()}
            on_cluster = settings.model_copy(update={"redis_url": cluster_env["NIMBUS_REDIS_URL"]})
            publish_features(FeatureStore.for_settings(on_cluster), compute_features(dataset))
            publish(on_cluster, version)
            targets["rec-cluster"] = cluster_env
            print(f"Redis Cluster: 3 masters at {cluster_env['NIMBUS_REDIS_URL']}, same features and model\n")

        rec_ports, hello_port = {name: free_port() for name in targets}, free_port()
        for name, port in rec_ports.items():
            servers.append(serve([sys.executable, "-m", "nimbus.cli", "recommend", "serve", "--port", str(port),
                                  "--workers", "2"], targets[name], f"http://127.0.0.1:{port}/health"))
        servers.append(serve([sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "benchmarks"), "hello_app:app",
                              "--port", str(hello_port), "--workers", "2", "--log-level", "warning",
                              "--no-access-log"], env, f"http://127.0.0.1:{hello_port}/hello"))
        users = [f"u{n}" for n in range(1, args.users, max(1, args.users // 97))]
        for name, port in rec_ports.items():
            answers = Counter()
            for n in range(200):  # warm both workers' caches; and what they answer, so no side is timed degraded
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/recommendations/{users[n % len(users)]}") as got:
                    body = json.loads(got.read())
                answers[f"{body['strategy']}{' degraded' if body['degraded'] else ''}"] += 1
            print(f"{name}: warm-up answers {dict(answers)}")
        print()

        print(f"{'endpoint':<16}{'target/s':>9}{'got/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}"
              f"{'p99 x hello':>13}{'got/s x single':>16}")
        best = 0
        for i, level in enumerate([*levels, None]):
            picks = [users[(i * HEY_PROCESSES + j) % len(users)] for j in range(HEY_PROCESSES)]
            got = {name: load([f"http://127.0.0.1:{port}/recommendations/{u}?k=10" for u in picks], level,
                              args.seconds, connections=20 if level else 32) for name, port in rec_ports.items()}
            hello = load([f"http://127.0.0.1:{hello_port}/hello"] * HEY_PROCESSES, level, args.seconds,
                         connections=20 if level else 32)
            label = str(level) if level else "max"
            for name, r in (*got.items(), ("hello-world", hello)):
                ratio = f"{r['p99'] / hello['p99']:.1f}" if name in got else ""
                vs_single = f"{r['rps'] / got['recommend']['rps']:.2f}" if name == "rec-cluster" else ""
                print(f"{name:<16}{label:>9}{r['rps']:>9.0f}{r['p50']:>9.2f}{r['p95']:>9.2f}{r['p99']:>9.2f}"
                      f"{r['errors']:>8}{ratio:>13}{vs_single:>16}")
            rec = got["recommend"]
            if rec["p99"] <= 50 and rec["errors"] == 0:
                best = max(best, int(rec["rps"]))
        print(f"\nhighest rate sustained by recommend with p99 <= 50 ms and no errors: {best:,} requests/s")
        print(f"at max: recommend {got['recommend']['rps']:,.0f} requests/s, hello-world {hello['rps']:,.0f}: "
              f"{got['recommend']['rps'] / hello['rps']:.2f}x (goal, issue 16: >= 0.5x)")
        if "rec-cluster" in got:
            print(f"at max: the Redis Cluster served {got['rec-cluster']['rps']:,.0f} requests/s, the single Redis "
                  f"{got['recommend']['rps']:,.0f}: {got['rec-cluster']['rps'] / got['recommend']['rps']:.2f}x "
                  "(goal >= 0.8x)")

        if args.profile:
            collapsed = home / "recommend.collapsed"
            picks = [f"http://127.0.0.1:{rec_ports['recommend']}/recommendations/{u}?k=10"
                     for u in users[:HEY_PROCESSES]]
            spy = threading.Thread(target=profile, args=(servers[0].pid, args.seconds, collapsed))
            spy.start()
            load(picks, None, args.seconds, connections=32)
            spy.join()
            print(f"\nprofile of the recommend workers at maximum load ({args.seconds:g} s, py-spy):")
            print(profile_summary(collapsed) if collapsed.exists() else "  (no profile: py-spy missing?)")

        runs = cold_start(env, args.cold_runs)
        print(f"\ncold start of the recommend handler over {len(runs)} new processes "
              "(interpreter + import + model/feature load + first answer):")
        for n, r in enumerate(runs, 1):
            print(f"  run {n}: process {r['process_s']:.3f} s = import {r['import_s']:.3f} s + first answer "
                  f"{r['first_answer_s']:.3f} s (+ interpreter); HTTP {r['status']}; heavy modules: {r['heavy'] or 'none'}"
                  f"; bare `python -c \"{BARE_IMPORTS}\"` {r['bare_s']:.3f} s")
        walls, bares = [r["process_s"] for r in runs], [r["bare_s"] for r in runs]
        print(f"  median {statistics.median(walls):.3f} s, best {min(walls):.3f} s, worst {max(walls):.3f} s")
        print(f"  bare `python -c \"{BARE_IMPORTS}\"` median {statistics.median(bares):.3f} s: cold start "
              f"{statistics.median(walls) / statistics.median(bares):.2f}x the bare process (goal, issue 16: <= 1.5x)")

        m = result.metrics
        print(f"\noffline quality on the time-split holdout ({int(m['test_users'])} users):")
        print(f"  recall@10  {m['recall_at_10']:.3f}  vs popularity {m['popular_recall_at_10']:.3f}  "
              f"({m['recall_at_10'] / m['popular_recall_at_10']:.2f}x)")
        print(f"  NDCG@10    {m['ndcg_at_10']:.3f}  vs popularity {m['popular_ndcg_at_10']:.3f}  "
              f"({m['ndcg_at_10'] / m['popular_ndcg_at_10']:.2f}x)")
    finally:
        for proc in servers:
            stop(proc)
        if cluster is not None:
            cluster.stop()
        stack.down()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
