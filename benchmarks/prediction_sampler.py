"""What predict's drift sampler adds to one request: ``PredictionSampler.add`` for a single-record
answer of the churn models (20 features), per sampling rate, in-process (no Redis: what is kept is
drained, never flushed).

    .venv/bin/python benchmarks/prediction_sampler.py [--requests 200000]
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "shared"))

from nimbus.serving.samples import PredictionSampler
from nimbus.stores.redis.live import LiveModelStore


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200_000)
    n = parser.parse_args().requests
    records = [{f"f{j}": 0.1 * j for j in range(20)}]
    predictions = [{"label": 1, "probabilities": {"0": 0.3, "1": 0.7}}]
    for rate in (0.0, 0.01, 0.1, 1.0):
        sampler = PredictionSampler(LiveModelStore("redis://127.0.0.1:9/0"), rate, flush_s=3600)
        best = min(timeit.repeat(lambda s=sampler: s.add("churn-lr", "1", records, predictions), number=n, repeat=3))
        print(f"rate {rate:<5} {best / n * 1e6:6.2f} us per single-record request")
        sampler.buffer.drain(n * 3)
        sampler.stop()


if __name__ == "__main__":
    main()
