"""Appends every event it gets to $T_DROP_LOG; fails on keys containing 'flaky' until $T_DROP_LOG.ok exists."""
import json
import os
from pathlib import Path


def handler(event, context):
    log = Path(os.environ["T_DROP_LOG"])
    with log.open("a") as out:
        out.write(json.dumps(event) + "\n")
    keys = [r.get("s3", {}).get("object", {}).get("key", "") for r in event.get("Records", [])]
    marker = log.with_suffix(".ok")
    if any("flaky" in k for k in keys) and not marker.exists():
        marker.touch()
        raise RuntimeError("transient failure, try again")
    return {"handled": keys}
