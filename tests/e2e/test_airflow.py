"""The Airflow DAGs, run end to end with `airflow dags test` on SQLite against the test stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nimbus.batch.examples import write_records
from nimbus.config import Settings
from nimbus.stores.documents import Collections, DocumentStore
from tests.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
AIRFLOW = Path(sys.executable).parent / "airflow"


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if not AIRFLOW.exists():
        pytest.fail("airflow is not installed: make installs the [airflow] extra")
    home = tmp_path_factory.mktemp("airflow")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/a.db",
           "AIRFLOW__CORE__UNIT_TEST_MODE": "False", "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"}
    done = subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return env


def test_the_batch_dag_scores_a_dropped_file(batch_stack: Settings, airflow_env: dict[str, str]) -> None:
    uri = f"s3://{batch_stack.data_bucket}/{batch_stack.drop_prefix}airflow.parquet"
    write_records(batch_stack, uri, 1500, bad_rows=6, seed=12)
    env = {**airflow_env, **{k: v for k, v in os.environ.items() if k.startswith("NIMBUS_")}}
    done = subprocess.run([str(AIRFLOW), "dags", "test", "batch_predictions", "2026-11-26"], env=env,
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    [run] = DocumentStore.for_settings(batch_stack).collection(Collections.BATCH_RUNS).find({})
    assert run["status"] == "succeeded" and run["counts"] == {"records": 1500, "scored": 1494, "quarantined": 6,
                                                                "duplicates": 0}
    assert run["actor"] == "airflow"
    assert DocumentStore.for_settings(batch_stack).collection(Collections.BATCH_PREDICTIONS).count_documents({}) == 1494
