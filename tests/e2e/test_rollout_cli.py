"""`nimbus models rollout`, `rollout-status`, `judge` and `rollout-cancel`, each its own process as a user runs them."""

from __future__ import annotations

import json

import pytest

from nimbus import audit
from nimbus.config import Settings
from tests.e2e.test_cli import assert_one_line_error, run
from tests.integration.test_rollout import MODEL, rollout_models, stack  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


def test_a_rollout_from_the_command_line(stack: Settings, rollout_models: dict[str, str]) -> None:  # noqa: F811
    good = rollout_models["good"]
    started = run(["models", "rollout", MODEL, good, "--canary", "10%", "--reason", "cli test"])
    assert started.returncode == 0, started.stderr
    assert "rollout ro-" in started.stdout and f"of v{good}" in started.stdout and "running at 10%" in started.stdout
    shown = run(["models", "rollout-status", MODEL, "--json"])
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert (doc["candidate"], doc["state"], doc["share"], doc["reason"]) == (good, "running", 10, "cli test")
    judged = run(["models", "judge", MODEL, "--json"])
    assert judged.returncode == 0, judged.stderr
    assert [d["action"] for d in json.loads(judged.stdout)] == ["hold"]
    assert_one_line_error(run(["models", "rollout", MODEL, rollout_models["bad"]]), "already has a rollout running")
    cancelled = run(["models", "rollout-cancel", MODEL])
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout, cancelled.stderr
    assert audit.history(stack, f"model:{MODEL}", limit=1)[0]["action"] == "rollout_cancel"
    assert_one_line_error(run(["models", "rollout", MODEL, good, "--canary", "abc"]), "not a percentage")
    assert_one_line_error(run(["models", "rollout-cancel", MODEL]), "no rollout running")
