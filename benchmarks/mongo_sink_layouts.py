"""Records/s into MongoDB for the batch sink's candidate layouts and write options, in one run.

    .venv/bin/python benchmarks/mongo_sink_layouts.py [--records 50000]

Starts its own MongoDB-wire server (secantusdb, or mongod when installed; loopback, a free port) and
inserts the same predictions (two models' scores and versions) from one client, each way into a
collection of its own:
  - one document per record (`_id = run:record`), with the (run_key, record_id) index, 5,000 per insert;
  - the same without the secondary index (what "indexes built after the load" would give), 5,000 and
    20,000 per insert, and unacknowledged (w=0);
  - the bucket pattern: one document per block of 1,000 or 5,000 records with a multikey index on
    (run_key, record_ids) — what the batch sink writes (nimbus.batch.sinks).
Then the time to look one record up in each layout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "shared"), str(ROOT)]

from nimbus.config import Settings  # noqa: E402
from nimbus.local.stack import LocalStack, free_port  # noqa: E402

VERSIONS = {"churn-lr": "1", "churn-hgb": "2"}


def per_record(ids: list[str]) -> list[dict]:
    return [{"_id": f"k:{r}", "run_key": "k", "record_id": r, "scores": {"churn-lr": 0.5, "churn-hgb": 0.25},
             "versions": VERSIONS} for r in ids]


def blocks(ids: list[str], size: int) -> list[dict]:
    return [{"_id": f"k:part-00000:{b // size:05d}", "run_key": "k", "n": len(ids[b:b + size]),
             "record_ids": ids[b:b + size], "scores": {m: [0.5] * len(ids[b:b + size]) for m in VERSIONS},
             "versions": VERSIONS} for b in range(0, len(ids), size)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=50_000)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="nimbus-mongo-bench-"))
    os.environ.update({"NIMBUS_HOME": str(home), "NIMBUS_MONGO_URL": f"mongodb://127.0.0.1:{free_port()}/"})
    settings = Settings()
    stack = LocalStack(settings, ephemeral=True)
    stack.up(["mongodb"])
    try:
        import pymongo
        from pymongo import WriteConcern

        db = pymongo.MongoClient(settings.mongo_url)["bench"]
        n = args.records
        ids = [f"r{i}" for i in range(n)]
        ways = [  # (label, documents, records per insert, index keys, write concern)
            ("one document per record, with its index", per_record(ids), 5000, [("run_key", 1), ("record_id", 1)], 1),
            ("one document per record, no index", per_record(ids), 5000, None, 1),
            ("one document per record, no index, 20,000 per insert", per_record(ids), 20000, None, 1),
            ("one document per record, no index, w=0", per_record(ids), 5000, None, 0),
            ("blocks of 1,000 records, multikey index (kept)", blocks(ids, 1000), 20, [("run_key", 1), ("record_ids", 1)], 1),
            ("blocks of 5,000 records, multikey index", blocks(ids, 5000), 4, [("run_key", 1), ("record_ids", 1)], 1),
        ]
        print(f"{n:,} records into the local MongoDB-wire server, one client:")
        for i, (label, docs, per_insert, index, w) in enumerate(ways):
            collection = db.get_collection(f"way{i}", write_concern=WriteConcern(w=w))
            if index:
                collection.create_index(index)
            t = time.perf_counter()
            for start in range(0, len(docs), per_insert):
                collection.insert_many(docs[start:start + per_insert], ordered=False)
            if w == 0:  # wait until the server has them all, so the figure counts the server's work too
                while db[f"way{i}"].estimated_document_count() < len(docs):
                    time.sleep(0.01)
            sec = time.perf_counter() - t
            query = {"run_key": "k", "record_ids": ids[n * 2 // 3]} if "record_ids" in docs[0] else \
                {"run_key": "k", "record_id": ids[n * 2 // 3]}
            t = time.perf_counter()
            assert db[f"way{i}"].find_one(query) is not None
            lookup = time.perf_counter() - t
            print(f"  {label:<56} {n / sec:9,.0f} records/s   lookup of one record {lookup * 1000:5.1f} ms")
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
