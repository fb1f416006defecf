"""What a signed request id costs on the recommendation path, against the unsigned id it replaced.

    .venv/bin/python benchmarks/request_ids.py [--n 200000] [--rounds 5]

Times, in-process and interleaved over rounds (median per call): the old id (``uuid.uuid4().hex``,
the baseline), ``RequestSigner.issue`` (HMAC-SHA256 over nonce and user), ``RequestSigner.verify``
(what POST /events does per click) and the id character-set check done before any Redis key is built.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "shared"))

from nimbus.ids import RequestSigner, is_id  # noqa: E402


def per_call_us(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    signer = RequestSigner("benchmark-secret")
    issued = signer.issue("u42")
    cases = {
        "uuid4().hex (baseline)": lambda: uuid.uuid4().hex,
        "RequestSigner.issue": lambda: signer.issue("u42"),
        "RequestSigner.verify": lambda: signer.verify(issued, "u42"),
        "is_id(user_id)": lambda: is_id("u42"),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            times[name].append(per_call_us(fn, args.n))
    base = statistics.median(times["uuid4().hex (baseline)"])
    print(f"{args.n:,} calls x {args.rounds} rounds, median per call")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"  {name:<24} {median:7.2f} us   {median / base:5.2f}x baseline   ({median - base:+.2f} us)")


if __name__ == "__main__":
    main()
