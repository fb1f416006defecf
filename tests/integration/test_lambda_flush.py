"""The HTTP functions run as Lambda runs them: every exposure, outcome and traffic count is in Redis when
the handler returns, with no thread running between invocations.

Each function runs in its own process (tests/lambda_runtime.py) with ``AWS_LAMBDA_FUNCTION_NAME`` set,
invoked through its ``functions/*/handler.py`` ``handler(event, context)`` with API Gateway v2 events.
After each invocation the process is frozen (SIGSTOP, as Lambda freezes the sandbox) while the test
reads Redis, then thawed for the next one.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from nimbus.api.experiments import create_experiments_app
from nimbus.buffers import FLUSH_THREADS
from nimbus.config import Settings
from nimbus.monitoring.traffic import summary
from nimbus.stores.redis.experiments import ExperimentStore
from tests.conftest import ROOT

pytestmark = pytest.mark.integration
KEY = {"X-API-Key": "nimbus-local-key"}
EVENT = json.loads((ROOT / "tests" / "data" / "events" / "apigw_v2_get.json").read_text())


def apigw_event(method: str, path: str, query: str = "", body: Any = None,
                headers: dict[str, str] | None = None) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event, as Lambda hands it to the handler."""
    event = copy.deepcopy(EVENT)
    del event["headers"]["content-length"]  # a GET without a body has none
    event["headers"].update(headers or {})
    event["routeKey"] = event["requestContext"]["routeKey"] = "$default"
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["requestContext"]["http"]["method"] = method
    event["rawQueryString"] = query
    event["queryStringParameters"] = dict(p.split("=", 1) for p in query.split("&")) if query else {}
    event.pop("pathParameters", None)
    event.pop("cookies", None)
    if body is not None:
        event["body"] = json.dumps(body)
        event["headers"]["content-type"] = "application/json"
        event["headers"]["content-length"] = str(len(event["body"]))
    return event


class LambdaProcess:
    """A function's execution environment: one process, invoked one event at a time, frozen in between."""

    def __init__(self, function: str, log: Path) -> None:
        env = {**os.environ, "AWS_LAMBDA_FUNCTION_NAME": f"nimbus-{function}",
               "PYTHONPATH": os.pathsep.join([str(ROOT / "shared"), str(ROOT)])}
        self._stderr = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.lambda_runtime", f"functions.{function}.handler", function], cwd=ROOT,
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self.log = log

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        """Thaw, invoke, and freeze again once the handler has returned."""
        self.process.send_signal(signal.SIGCONT)
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps(event) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        self.process.send_signal(signal.SIGSTOP)  # nothing of this process runs until the next invoke
        assert line, f"the function's process ended: {self.log.read_text()[-2000:]}"
        answer = json.loads(line)
        started = set(answer["threads"])
        assert started.isdisjoint(FLUSH_THREADS), f"a flush thread was started on Lambda: {sorted(started)}"
        return answer["result"]

    def close(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        self.process.kill()
        self.process.wait(timeout=30)
        self._stderr.close()


@pytest.fixture
def experiment(live_recommender: dict) -> dict:
    """Champion and challenger in a running 50/50 experiment on the recommendations surface."""
    from nimbus.recommend.models import promote_version

    settings = live_recommender["settings"]
    promote_version(settings, live_recommender["versions"][1], "challenger")
    variants = [{"name": "control", "model": "champion", "weight": 0.5},
                {"name": "treatment", "model": "challenger", "weight": 0.5}]
    with TestClient(create_experiments_app(settings)) as admin:
        created = admin.post("/experiments", json={"name": "lambda-flush", "variants": variants}, headers=KEY)
        assert created.status_code == 201, created.text
        started = admin.post(f"/experiments/{created.json()['id']}/start", headers=KEY)
        assert started.status_code == 200, started.text
    return {**live_recommender, "experiment": started.json()["id"]}


@pytest.fixture
def lambdas(tmp_path: Path) -> Iterator[dict[str, LambdaProcess]]:
    processes = {name: LambdaProcess(name, tmp_path / f"{name}.log") for name in ("recommend", "events")}
    try:
        yield processes
    finally:
        for process in processes.values():
            process.close()


def requests(settings: Settings, function: str) -> int:
    return summary(settings, window_s=900)["functions"].get(function, {}).get("requests", 0)


def test_every_count_is_in_redis_when_each_invocation_returns(experiment: dict,
                                                              lambdas: dict[str, LambdaProcess]) -> None:
    settings: Settings = experiment["settings"]
    store = ExperimentStore.for_settings(settings)
    exp = experiment["experiment"]
    users = [str(u) for u in experiment["features"].user_ids[:8]] + ["new-1", "new-2"]
    served, answers = Counter(), []
    for n, user in enumerate(users, start=1):
        response = lambdas["recommend"].invoke(apigw_event("GET", f"/recommendations/{user}", "k=5"))
        assert response["statusCode"] == 200, response
        body = json.loads(response["body"])
        assert body["experiment"] == exp
        served[body["variant"]] += 1
        answers.append(body)
        counts = store.experiment_counts(exp, ["control", "treatment"])
        assert {v: counts[v]["exposures"] for v in counts} == {v: served[v] for v in ("control", "treatment")}
        assert requests(settings, "recommend") == n
    # A request the app refuses is counted too (the traffic of a 4xx).
    refused = lambdas["recommend"].invoke(apigw_event("GET", "/recommendations/u1", "k=0"))
    assert refused["statusCode"] == 422
    assert requests(settings, "recommend") == len(users) + 1

    clicked = Counter()
    for n, body in enumerate(answers[:4], start=1):
        click = {"event_id": f"c-{n}", "user_id": body["user_id"], "item_id": body["items"][0]["item_id"],
                 "type": "click", "request_id": body["request_id"]}
        response = lambdas["events"].invoke(apigw_event("POST", "/events", body={"events": [click]},
                                                        headers={"x-api-key": KEY["X-API-Key"]}))
        assert response["statusCode"] == 200, response
        clicked[body["variant"]] += 1
        counts = store.experiment_counts(exp, ["control", "treatment"])
        assert {v: counts[v]["clicks"] for v in counts} == {v: clicked[v] for v in ("control", "treatment")}
        assert requests(settings, "events") == n
