"""`nimbus automl run` as a user runs it: a one-shot process that searches, registers, prints the
leaderboard and exits 0 at once (its Ray shut down with the job); a missing dataset is one line."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from nimbus.automl.jobs import get_job
from nimbus.config import Settings
from tests.e2e.test_cli import assert_one_line_error, run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_automl_run_exits_0_and_prints_the_leaderboard(clean_stack: Settings, tmp_path: Path) -> None:
    frame = load_breast_cancer(as_frame=True).frame
    frame["target"] = np.where(frame["target"] == 1, "benign", "malignant")
    dataset = tmp_path / "cancer.csv"
    frame.to_csv(dataset, index=False)
    # 15 s: the quick defaults, scored in the process itself, are a result whatever Ray's start costs
    done = run(["automl", "run", str(dataset), "--target", "target", "--budget", "15"], {}, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "leaderboard (" in done.stdout and "held-out roc_auc" in done.stdout
    job_id = re.search(r"job ([0-9a-f]{12}): classification on 569 rows, metric roc_auc", done.stderr).group(1)
    job = get_job(clean_stack, job_id)
    assert job["status"] == "succeeded" and job["trials"] >= 1
    assert f"registered automl-{job_id} v{job['model']['version']}" in done.stdout
    for row in job["leaderboard"][:3]:
        assert re.search(rf"\b{row['rank']}\s+\S?\s*{row['algorithm']}\s+\S?\s*{row['score']:.4f}", done.stdout)
    assert "A new study created" not in done.stdout + done.stderr  # Optuna is quiet
    assert "Failed to fetch metrics" not in done.stdout + done.stderr  # nor Tune, for trials stopped at the end
    timings = job["timings"]
    assert 0 < timings["first_result_s"] <= timings["total_s"] == pytest.approx(job["elapsed_s"], abs=1e-3)
    assert re.search(r"time: first result [\d.]+ s, search [\d.]+ s, refit [\d.]+ s", done.stdout)


def test_automl_run_on_a_missing_dataset_is_a_one_line_error(clean_stack: Settings, tmp_path: Path) -> None:
    assert_one_line_error(run(["automl", "run", str(tmp_path / "nope.csv"), "--target", "y"], {}), "nope.csv")
