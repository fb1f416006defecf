"""The README's batch flow as a user runs it: every command its own process, checked by its exit status.

A process that registers models and one that scores with them share nothing but the stores,
so nothing may depend on what an earlier command set up in the same interpreter (MLflow's
process-global tracking URI, say). A model registered by someone's own plain
``mlflow.sklearn.log_model`` is scored the same way, once promoted through the audited path
(batch unpickles only versions an audited promotion vouches for)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nimbus.config import Settings
from nimbus.stores.documents import Collections, DocumentStore
from tests.e2e.test_cli import assert_one_line_error, run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Someone's own model, logged with nothing but MLflow and the tracking URI: no Nimbus tag, no kind.
USER_MODEL = """
import mlflow, numpy as np, pandas as pd
from mlflow.models import infer_signature
from sklearn.linear_model import LogisticRegression
from nimbus.batch.examples import FEATURES, make_records

table, y = make_records(2000, seed=5)
x = table.select(FEATURES).to_pandas().astype(np.float64)
model = LogisticRegression(max_iter=300).fit(x, y)
with mlflow.start_run():
    info = mlflow.sklearn.log_model(model, name="model", signature=infer_signature(x, model.predict(x)),
                                    registered_model_name="someones-churn")
print(info.registered_model_version)
"""


def run_doc(settings: Settings, key: str) -> dict:
    return DocumentStore.for_settings(settings).collection(Collections.BATCH_RUNS).find_one({"_id": key})


def test_models_registered_by_other_processes_score_in_a_batch_run_of_its_own(clean_stack: Settings,
                                                                              tmp_path: Path) -> None:
    # The session's stores, but an MLflow of this test's own (SQLite under its home, no server):
    # the churn models it registers must not become the session's champions.
    home = tmp_path / "home"
    mine = {"NIMBUS_HOME": str(home), "NIMBUS_MLFLOW_TRACKING_URI": "", "NIMBUS_MLFLOW_REGISTRY_URI": ""}

    def nimbus(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
        return run(args, mine, timeout=timeout)

    made = nimbus(["batch", "make-models", "--rows", "3000"])
    assert made.returncode == 0, made.stderr
    assert "churn-lr v1" in made.stdout and "churn-hgb v1" in made.stdout
    tracking = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "MLFLOW_REGISTRY_URI": tracking}
    # cwd: a plain MLflow puts its artifacts under ./mlruns of wherever it runs
    logged = subprocess.run([sys.executable, "-c", USER_MODEL], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=180)
    assert logged.returncode == 0, logged.stderr
    theirs = logged.stdout.strip().splitlines()[-1]
    uri = f"s3://{clean_stack.data_bucket}/{clean_stack.drop_prefix}t1.parquet"
    generated = nimbus(["batch", "generate", uri, "--rows", "2000", "--bad-rows", "5"])
    assert generated.returncode == 0, generated.stderr

    unknown = nimbus(["batch", "run", uri, "--models", "no-such-model@champion", "--sinks", "parquet"])
    assert_one_line_error(unknown, "no-such-model@champion is not in the registry")
    missing = nimbus(["batch", "run", uri.replace("t1", "t2")])
    assert_one_line_error(missing, "no such file")

    models = f"churn-lr@champion,churn-hgb@champion,someones-churn@{theirs}"
    unvetted = nimbus(["batch", "run", uri, "--models", models, "--sinks", "parquet"])
    assert_one_line_error(unvetted, f"someones-churn@{theirs}: version {theirs} was never promoted",
                          f"nimbus models promote someones-churn {theirs}")
    promoted = nimbus(["models", "promote", "someones-churn", theirs, "--reason", "reviewed"])
    assert promoted.returncode == 0, promoted.stderr
    scored = nimbus(["batch", "run", uri, "--models", models, "--json"], timeout=300)
    assert scored.returncode == 0, scored.stderr
    result = json.loads(scored.stdout)  # progress went to stderr: stdout is the result alone
    assert "scored 2,000 of 2,000 records (1/1 tasks)" in scored.stderr  # the scoring job's count, live
    assert result["status"] == "succeeded" and (result["scored"], result["quarantined"]) == (1995, 5)
    assert set(result["models"]) == {"churn-lr", "churn-hgb", "someones-churn"}
    assert result["models"]["someones-churn"] == theirs
    assert run_doc(clean_stack, result["run_key"])["status"] == "succeeded"
