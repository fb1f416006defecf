"""Per-request cost of A/B assignment and exposure tracking on the recommendation path.

    .venv/bin/python benchmarks/exposure_overhead.py [--requests 20000] [--rounds 5]

Starts its own redis-server (loopback, free port), publishes features of a synthetic log
(2,000 users, 1,000 items), trains a ranker and puts two versions live (champion,
challenger), then times ``Recommender.recommend`` in-process for the same users:

* baseline: no experiment, no exposure tracker (issue 3's path, with the feature sampler);
* with a running 50/50 experiment (assignment: two FNV-1a hashes) and the exposure
  tracker listener (a tuple onto an in-process queue);

rounds interleaved, median per-request time of each, and the difference. Then the two
seams alone in a tight loop, and the background flush's cost per answer (CPU spent in the
tracker thread, off the request path, plus the Redis round trip amortised over a batch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "shared"))

from nimbus.config import Settings  # noqa: E402
from nimbus.local.stack import LocalStack, free_port  # noqa: E402


def per_request_us(recommender, users: list[str]) -> float:
    start = time.perf_counter()
    for user in users:
        recommender.recommend(user, 10)
    return (time.perf_counter() - start) / len(users) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home), redis_url=f"redis://127.0.0.1:{free_port()}/0")
        stack = LocalStack(settings, ephemeral=True)
        stack.up(["redis"])
        try:
            run(settings, args.requests, args.rounds)
        finally:
            stack.down()


def run(settings: Settings, n: int, rounds: int) -> None:
    from nimbus.experiments.assignment import assign, bucket_ranges
    from nimbus.experiments.exposures import ExposureTracker, RunningExperiments
    from nimbus.ids import RequestSigner
    from nimbus.recommend.bundle import MODEL_NAME
    from nimbus.recommend.data import generate
    from nimbus.recommend.featurize import compute_features
    from nimbus.recommend.live import LiveModels
    from nimbus.recommend.pipeline import publish_features
    from nimbus.recommend.serving import FeatureSampler, Recommender
    from nimbus.recommend.training import train
    from nimbus.stores.redis.experiments import ExperimentStore
    from nimbus.stores.redis.features import FeatureStore
    from nimbus.stores.redis.live import LiveModelStore

    store = FeatureStore(settings.redis_url)
    models, experiment_store = LiveModelStore(settings.redis_url), ExperimentStore(settings.redis_url)
    dataset = generate(n_users=2000, n_items=1000, n_categories=12, days=40, seed=3)
    publish_features(store, compute_features(dataset))
    bundle = train(dataset).bundle
    for version, alias in (("1", "champion"), ("2", "challenger")):
        models.put_model(MODEL_NAME, version, bundle.to_bytes())
        models.set_live(MODEL_NAME, alias, version)
    live = LiveModels(store, models)
    live.refresh()
    fast = FeatureStore(settings.redis_url, settings.request_timeout_s)
    users = [str(u) for u in dataset.interactions["user_id"].unique()[:1000]]
    users = (users * (max(n, 100_000) // len(users) + 1))[:max(n, 100_000)]

    signer = RequestSigner.for_settings(settings)
    base = Recommender(fast, live, signer)
    base.listeners.append(FeatureSampler(models, MODEL_NAME))
    tracked = Recommender(fast, live, signer)
    tracked.listeners.append(FeatureSampler(models, MODEL_NAME))
    experiment_store.claim_surface("recommendations", json.dumps({
        "id": "exp-bench", "name": "bench", "seed": "exp-bench",
        "variants": [{"name": "control", "alias": "champion", "version": "1"},
                     {"name": "treatment", "alias": "challenger", "version": "2"}],
        "ranges": bucket_ranges(2, 1.0, [0.5, 0.5])}))
    experiments = RunningExperiments(experiment_store)
    experiments.refresh()
    tracked.assigner = experiments
    tracker = ExposureTracker(experiment_store, settings, background=False)  # flushed below, timed apart
    tracked.listeners.append(tracker)

    timed = users[:n]
    per_request_us(base, users[:2000]), per_request_us(tracked, users[:2000])  # warm both
    drain(tracker)
    base_t, tracked_t = [], []
    for _ in range(rounds):
        base_t.append(per_request_us(base, timed))
        tracked_t.append(per_request_us(tracked, timed))
        drain(tracker)  # keep the queue from growing between rounds (not timed here)
    b, t = statistics.median(base_t), statistics.median(tracked_t)
    print(f"recommend() in-process, {n:,} requests x {rounds} rounds (median per request):")
    print(f"  baseline (no experiment, no tracker) : {b:8.1f} us")
    print(f"  running experiment + exposure tracker: {t:8.1f} us   (+{t - b:.1f} us, {t / b:.3f}x)")

    answer = tracked.recommend(users[0], 10)
    loops = 100_000
    fresh = [f"visitor-{i}" for i in range(loops)]
    ranges = experiments.current.ranges
    start = time.perf_counter()
    for user in fresh:
        assign("exp-bench", user, ranges)
    hash_ns = (time.perf_counter() - start) / loops * 1e9
    start = time.perf_counter()
    for user in users[:loops]:
        experiments(user)
    assign_ns = (time.perf_counter() - start) / min(loops, len(users)) * 1e9
    start = time.perf_counter()
    for _ in range(loops):
        tracker(answer)
    listen_ns = (time.perf_counter() - start) / loops * 1e9
    start = time.perf_counter()
    flushed = drain(tracker)
    flush_us = (time.perf_counter() - start) / flushed * 1e6
    print(f"  the seams alone: assignment {assign_ns:.0f} ns (a new user's hash {hash_ns:.0f} ns), "
          f"tracker listener {listen_ns:.0f} ns per request")
    print(f"  background flush (off the request path): {flush_us:.1f} us per answer "
          f"({flushed:,} answers in batches of 5,000)")


def drain(tracker) -> int:
    total = 0
    while n := tracker.flush():
        total += n
    return total


if __name__ == "__main__":
    main()
