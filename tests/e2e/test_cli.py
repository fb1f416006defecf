"""The `nimbus` command as a user runs it: local up/status/down, invoke, demo, errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, stack_env

pytestmark = pytest.mark.e2e
NIMBUS = [sys.executable, "-m", "nimbus.cli"]


def run(args: list[str], env: dict[str, str] | None = None, timeout: float = 180, stdin: str | None = None) -> subprocess.CompletedProcess:
    wide = {"COLUMNS": "250"}  # rich tables fit on one line per row
    return subprocess.run([*NIMBUS, *args], env={**os.environ, **wide, **(env or {})}, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, input=stdin)


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    # Progress steps may come first on stderr; the error itself is the one last line.
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and lines[-1] == errors[0], done.stderr
    for fragment in fragments:
        assert fragment in errors[0]


def pids_of(home: Path) -> list[int]:
    return [json.loads(p.read_text())["pid"] for p in (home / "run").glob("*.json")]


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for a second stack on its own ports, always brought down afterwards."""
    env = stack_env(tmp_path / "home")
    env["NIMBUS_MLFLOW_TRACKING_URI"] = ""  # the default local mode: MLflow on SQLite, no server
    yield env
    run(["local", "down"], env)


@pytest.mark.slow
def test_local_up_status_down_leaves_no_process(own_stack: dict[str, str]) -> None:
    up = run(["local", "up"], own_stack)
    assert up.returncode == 0, up.stderr
    home = Path(own_stack["NIMBUS_HOME"])
    pids = pids_of(home)
    assert len(pids) == 3  # redis, mongodb-wire, s3/sqs; MLflow on SQLite is no process
    status = run(["local", "status"], own_stack)
    assert status.returncode == 0, status.stdout
    for name in ("redis", "mongodb", "s3", "mlflow"):
        assert name in status.stdout
    assert status.stdout.count(" up ") == 4
    again = run(["local", "up"], own_stack)  # idempotent: nothing restarted
    assert again.returncode == 0 and sorted(pids_of(home)) == sorted(pids)

    down = run(["local", "down"], own_stack)
    assert down.returncode == 0 and "redis" in down.stdout
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    after = run(["local", "status"], own_stack)
    assert after.returncode == 3 and after.stdout.count(" down ") == 3


def test_a_taken_port_is_a_one_line_error(own_stack: dict[str, str]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = {**own_stack, "NIMBUS_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
        done = run(["local", "up", "--services", "redis"], env)
    assert_one_line_error(done, f"port {port} for redis is taken", "NIMBUS_REDIS_URL")


def test_an_unknown_service_is_a_one_line_error(own_stack: dict[str, str]) -> None:
    assert_one_line_error(run(["local", "up", "--services", "postgres"], own_stack), "unknown service(s) postgres")


def test_invoke_runs_the_health_function_with_a_cloud_event(clean_stack) -> None:
    done = run(["invoke", "health", "--event", "tests/data/events/apigw_v2_health.json", "--json"], {})
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["statusCode"] == 200 and json.loads(answer["body"])["status"] == "ok"


def test_invoke_reads_the_event_from_stdin(clean_stack) -> None:
    event = (ROOT / "tests/data/events/apigw_v2_health.json").read_text()
    done = run(["invoke", "health", "--event", "-", "--json"], {}, stdin=event)
    assert done.returncode == 0 and json.loads(done.stdout)["statusCode"] == 200


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["invoke", "health", "--data", "{not json"], ["event is not valid JSON"]),
        (["invoke", "health", "--event", "no/such/file.json"], ["event file no/such/file.json not found"]),
        (["invoke", "nope", "--data", "{}"], ["no function 'nope'", "health"]),
        (["invoke", "health", "--data", '{"Records": "x"}'], ["health failed", "unable to infer"]),
    ],
)
def test_bad_invocations_are_one_line_errors(args: list[str], fragments: list[str]) -> None:
    assert_one_line_error(run(args, {}), *fragments)


def test_an_unreachable_store_is_named_by_nimbus_health(tmp_path: Path) -> None:
    env = stack_env(tmp_path)
    env["NIMBUS_STORE_TIMEOUT_S"] = "0.5"
    done = run(["health"], env)
    assert done.returncode == 3
    assert "Traceback" not in done.stdout + done.stderr
    assert "down" in done.stdout and env["NIMBUS_REDIS_URL"] in done.stdout


@pytest.mark.slow
def test_demo_shows_the_three_jobs_and_brings_the_stack_down(own_stack: dict[str, str]) -> None:
    done = run(["demo"], own_stack, timeout=480)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nimbus-recommender v1 is live" in done.stdout and "personalized" in done.stdout
    assert "POST /events: 3 clicks" in done.stdout and "nimbus health: ok" in done.stdout
    assert "verdict: winner (treatment)" in done.stdout  # the planted preference for the challenger is found
    assert "(champion): ok," in done.stdout and "samples, no drift" in done.stdout  # enough samples to judge
    assert "20,000 records = 19,960 scored + 40 quarantined" in done.stdout
    assert "leaderboard (" in done.stdout and "held-out roc_auc" in done.stdout and "registered automl-" in done.stdout
    # the loop: the winner served by predict, a stale-trained candidate rolled back by itself, a fresh one promoted
    assert "POST /predict/automl-churn (3 records): v1 @champion" in done.stdout
    rolled_back, promoted = done.stdout.split("--canary 10%")[1:3]
    assert "judged: rollback: rolled back at 10%" in rolled_back and "input_psi fail" in rolled_back
    assert "judged: step: guardrails passed at 10%" in promoted and "judged: complete: guardrails passed at 50%" in promoted
    assert "promoted to champion" in promoted and "error_rate pass" in promoted
    assert done.stdout.count(" requests during the rollout, 0 failed") == 2
    assert "/dashboard" in done.stdout
    for noise in ("Successfully registered model", "Downloading artifacts", "View detailed results"):
        assert noise not in done.stdout + done.stderr
    assert "stopped: redis, mongodb, s3" in done.stdout
    assert pids_of(Path(own_stack["NIMBUS_HOME"])) == []


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def test_every_command_prints_a_table_or_summary_by_default_and_the_same_facts_with_json(clean_stack,
                                                                                         tmp_path: Path) -> None:
    """As a user runs them, each its own process: the default output is for people (a table or one line,
    not JSON); ``--json`` is the whole result, alone on stdout, and says what the table said."""
    records = str(tmp_path / "churn.parquet")
    commands = {
        "health": ["health"],
        "generate": ["batch", "generate", records, "--rows", "300", "--bad-rows", "3"],
        "traffic": ["monitor", "traffic", "--window", "60"],
        "jobs": ["automl", "list"],
        "key": ["keys", "new", "ops-test", "--scope", "read"],
    }
    shown = {name: run(args) for name, args in commands.items()}
    parsed = {}
    for name, args in commands.items():
        done = run([*args, "--json"])
        assert done.returncode == 0 and shown[name].returncode == 0, (name, done.stderr, shown[name].stderr)
        assert not is_json(shown[name].stdout), (name, shown[name].stdout)
        parsed[name] = json.loads(done.stdout)  # nothing but the JSON document on stdout

    health = parsed["health"]
    assert health["status"] == "ok" and "nimbus health: ok" in shown["health"].stdout
    for store in health["stores"]:
        assert store["store"] in shown["health"].stdout and store["url"] in shown["health"].stdout
    assert (parsed["generate"]["records"], parsed["generate"]["bad_records"]) == (300, 3)
    assert shown["generate"].stdout.strip() == f"300 records (3 planted bad) -> {parsed['generate']['where']}"
    assert parsed["traffic"]["window_s"] == 60 and "last 60 s" in shown["traffic"].stdout
    for function in parsed["traffic"]["functions"]:
        assert function in shown["traffic"].stdout
    assert parsed["jobs"]["total"] == 0 and "AutoML jobs" in shown["jobs"].stdout
    key = parsed["key"]  # a new key each time; the same shape
    assert key["name"] == "ops-test" and key["scopes"] == ["read"] and key["entry"].startswith("ops-test:read:")
    assert shown["key"].stdout.startswith("key: nk_") and "entry: ops-test:read:" in shown["key"].stdout
    assert "NIMBUS_API_KEYS" in shown["key"].stderr and "NIMBUS_API_KEYS" not in shown["key"].stdout
