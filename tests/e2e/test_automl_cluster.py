"""AutoML on a real two-node Ray cluster on loopback, by setting the Ray address only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nimbus.automl.jobs import COLLECTION
from nimbus.config import Settings
from nimbus.local.stack import free_port
from nimbus.stores.documents import DocumentStore
from tests.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
RAY = Path(sys.executable).parent / "ray"


@pytest.fixture
def ray_cluster(tmp_path: Path):  # noqa: ANN201
    port = free_port()
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    common = ["--num-cpus", "1", "--block", "--disable-usage-stats"]
    head = subprocess.Popen([str(RAY), "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                             "--include-dashboard", "false", "--temp-dir", str(tmp_path / "ray"), *common],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(8)
    worker = subprocess.Popen([str(RAY), "start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1",
                               *common], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    time.sleep(8)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for proc in (worker, head):
            try:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, 9)
        shutil.rmtree(tmp_path / "ray", ignore_errors=True)


def test_a_job_spreads_its_trials_over_both_nodes(clean_stack: Settings, ray_cluster: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(5)]).assign(y=(x[:, 0] + x[:, 1] > 0).astype(int))
    data = tmp_path / "cluster.csv"
    frame.to_csv(data, index=False)
    env = {**os.environ, "NIMBUS_RAY_ADDRESS": ray_cluster, "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "nimbus.cli", "automl", "run", str(data), "--target", "y",
                           "--budget", "25", "--include", "logistic,knn,random_forest"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    [job] = DocumentStore.for_settings(clean_stack).collection(COLLECTION).find({})
    nodes = {row["node"] for row in job["leaderboard"]}
    assert job["status"] == "succeeded" and len(nodes) == 2, nodes
