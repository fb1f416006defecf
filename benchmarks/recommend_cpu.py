"""CPU per request of the recommendation API in-process, next to the hello-world, with a cProfile summary.

    .venv/bin/python benchmarks/recommend_cpu.py [--n 5000] [--users 5000] [--items 2000] [--top 25]

Starts its own Redis and MongoDB (loopback) and a SQLite MLflow in a temporary folder, publishes
features and a promoted ranker as benchmarks/recommend_load.py does, then calls both ASGI apps
directly (no server, no sockets to the client: only the app's own work and its Redis round trip),
cycling over every user, and prints the microseconds per request of each and the top functions of
the recommendation path by own time and by total time (cProfile).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "shared"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from nimbus.config import Settings  # noqa: E402
from nimbus.local.stack import LocalStack, free_port  # noqa: E402


def scope(path: str, query: bytes) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "",
            "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}


DEGRADED = [0]  # answers served degraded (Redis slow or down: the breaker's fallback), over every drive


async def drive(app, paths: list[str], n: int, query: bytes = b"k=10") -> float:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    start = time.perf_counter()
    for i in range(n):
        await app(scope(paths[i % len(paths)], query), receive, send)
        if sent[0]["status"] != 200:
            raise SystemExit(f"{paths[i % len(paths)]}: HTTP {sent[0]['status']}")
        DEGRADED[0] += b'"degraded":true' in sent[-1].get("body", b"")
        sent.clear()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="nimbus-cpu-"))
    env = {"NIMBUS_HOME": str(home), "NIMBUS_PROJECT_ROOT": str(ROOT),
           "NIMBUS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "NIMBUS_MLFLOW_TRACKING_URI": "",
           "NIMBUS_MONGO_URL": f"mongodb://127.0.0.1:{free_port()}/", "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_LOGGING_LEVEL": "WARNING"}
    os.environ.update(env)
    settings = Settings()
    stack = LocalStack(settings, ephemeral=True)
    stack.up(["redis", "mongodb"])
    try:
        from hello_app import app as hello

        from nimbus.api.recommend import create_recommend_app
        from nimbus.recommend.data import generate
        from nimbus.recommend.featurize import compute_features
        from nimbus.recommend.models import register
        from nimbus.recommend.pipeline import publish_features
        from nimbus.recommend.training import train
        from nimbus.stores.redis.features import FeatureStore

        dataset = generate(args.users, args.items)
        publish_features(FeatureStore.for_settings(settings), compute_features(dataset))
        register(train(dataset), settings, promote=True)
        app = create_recommend_app(settings)
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the request lines are formatted, not kept
        paths = [f"/recommendations/u{n}" for n in range(1, args.users + 1)]
        loop = asyncio.new_event_loop()
        loop.run_until_complete(drive(app, paths, 500))  # warm: model, features, caches
        loop.run_until_complete(drive(hello, ["/hello"], 500))
        rec_us = loop.run_until_complete(drive(app, paths, args.n))
        hello_us = loop.run_until_complete(drive(hello, ["/hello"], args.n))
        print(f"in-process, {args.n:,} requests over {len(paths):,} users: recommend {rec_us:.0f} us/request, "
              f"hello-world {hello_us:.0f} us/request ({rec_us / hello_us:.1f}x); degraded answers: {DEGRADED[0]}")
        profiler = cProfile.Profile()
        profiler.enable()
        loop.run_until_complete(drive(app, paths, args.n))
        profiler.disable()
        for key in ("tottime", "cumtime"):
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(key).print_stats(args.top)
            body = out.getvalue()
            print(f"\ntop by {key}:\n" + body[body.index("ncalls"):].rstrip())
    finally:
        sys.stderr = sys.__stderr__
        stack.down()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
