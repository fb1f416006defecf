"""Cost of the Redis store calls on the hot paths, on one Redis and (``--cluster``) on a 3-master cluster.

    .venv/bin/python benchmarks/redis_paths.py [--rounds 5] [--cluster]

Starts its own redis-server (loopback, free port, nothing saved) and, with ``--cluster``, a
throw-away cluster (nimbus.local.redis_cluster), then times, best of ``--rounds``:
``FeatureStore.read_user`` (the request path's one round trip, us per call), ``apply_events``
(a 500-event batch over 100 users, ms) and ``ExperimentStore.record_served`` (a 500-answer
exposure flush, ms).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "shared"))

from nimbus.local.redis_cluster import LocalRedisCluster  # noqa: E402
from nimbus.local.stack import free_port  # noqa: E402
from nimbus.stores.redis.base import RedisStore  # noqa: E402
from nimbus.stores.redis.experiments import ExperimentStore  # noqa: E402
from nimbus.stores.redis.features import FeatureStore, RealtimeEvent  # noqa: E402
from nimbus.stores.redis.keys import ServedRow  # noqa: E402


def measure(url: str, rounds: int) -> dict[str, float]:
    features, experiments = FeatureStore(url, 0.05), ExperimentStore(url)
    features.write_feature_set("v1", b"items", [(f"u{i}", b"x" * 400) for i in range(100)], {})
    best: dict[str, float] = {}

    def keep(name: str, value: float) -> None:
        best[name] = min(best.get(name, float("inf")), value)

    for r in range(rounds):
        start = time.perf_counter()
        for n in range(10_000):
            features.read_user("v1", f"u{n % 100}", 20)
        keep("read_user us", (time.perf_counter() - start) / 10_000 * 1e6)
        events = [RealtimeEvent(f"r{r}-{i}", f"u{i % 100}", f"i{i}", "c1", 1.0, 1.0 + i) for i in range(5000)]
        start = time.perf_counter()
        for i in range(0, 5000, 500):
            features.apply_events(events[i:i + 500], 20)
        keep("apply_events/500 ms", (time.perf_counter() - start) / 10 * 1e3)
        rows = [ServedRow(f"q{r}x{i}", f"u{i % 100}", "exp-1", "control", "1", ("i1", "i2"), 1000.0 + i, 0.5)
                for i in range(5000)]
        start = time.perf_counter()
        for i in range(0, 5000, 500):
            experiments.record_served(rows[i:i + 500], 3600, 60, 7200)
        keep("record_served/500 ms", (time.perf_counter() - start) / 10 * 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cluster", action="store_true", help="also on a 3-master Redis Cluster")
    args = parser.parse_args()
    port = free_port()
    single = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL)
    cluster = LocalRedisCluster(Path(tempfile.mkdtemp(prefix="nimbus-bench-cluster-"))) if args.cluster else None
    try:
        urls = {"single Redis": f"redis://127.0.0.1:{port}/0"}
        for _ in range(100):  # until the fresh server answers
            try:
                RedisStore(urls["single Redis"]).client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        if cluster is not None:
            urls["Redis Cluster"] = cluster.start()
        results = {name: measure(url, args.rounds) for name, url in urls.items()}
        names = list(next(iter(results.values())))
        print(f"{'':<16}" + "".join(f"{n:>22}" for n in names))
        for where, got in results.items():
            print(f"{where:<16}" + "".join(f"{got[n]:>22.2f}" for n in names))
    finally:
        if cluster is not None:
            cluster.stop()
        single.terminate()
        single.wait(timeout=10)


if __name__ == "__main__":
    main()
