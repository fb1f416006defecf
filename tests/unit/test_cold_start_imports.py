"""The recommend handler's cold start imports only what answering needs (checked in a new process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Not needed to answer GET /recommendations: training, registry, MongoDB, S3, Spark/Ray, the
# structlog/rich traceback renderers (a plain JSON line needs neither) and the tracing SDK's instrumentation.
HEAVY = ("mlflow", "pandas", "sklearn", "scipy", "pymongo", "bson", "boto3", "botocore", "pyspark", "ray",
         "structlog", "rich", "opentelemetry.instrumentation",
         "opentelemetry.exporter")
PROBE = f"""
import json, sys
from functions.recommend.handler import handler, app
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""


def test_importing_the_recommend_handler_imports_nothing_heavy(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NIMBUS_", "OTEL_"))}
    env.update(NIMBUS_HOME=str(tmp_path), PYTHONPATH=os.pathsep.join([str(ROOT / "shared"), str(ROOT)]))
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
