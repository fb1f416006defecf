"""Schemathesis against every app's own OpenAPI schema, through the real apps on the test stack: for
inputs generated from the schema (valid and not), no answer is a 5xx, and every answer matches the
schema the app documents for its status. A bounded number of examples per operation keeps it fast.

The apps run with the local stack's admin key, so generated requests reach past the key check (the
401s are tests/integration/test_auth.py's); the recommender is live so its routes answer for real.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from nimbus.api.automl import create_automl_app
from nimbus.api.dashboard import create_dashboard_app
from nimbus.api.events import create_events_app
from nimbus.api.experiments import create_experiments_app
from nimbus.api.health import create_health_app
from nimbus.api.models import create_models_app
from nimbus.api.predict import create_predict_app
from nimbus.api.recommend import create_recommend_app
from nimbus.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KEY = {"X-API-Key": "nimbus-local-key"}  # the local stack's key (admin: every scope)
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
EXAMPLES = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))

APPS: dict[str, tuple[Callable[[Settings], FastAPI], str]] = {
    "health": (lambda s: create_health_app(), "/openapi.json"),
    "recommend": (create_recommend_app, "/openapi.json"),
    "events": (create_events_app, "/openapi.json"),
    "experiments": (create_experiments_app, "/openapi.json"),
    "models": (create_models_app, "/openapi.json"),
    "predict": (create_predict_app, "/openapi.json"),
    "automl": (lambda s: create_automl_app(), "/openapi.json"),
    "dashboard": (lambda s: create_dashboard_app(), "/dashboard/openapi.json"),
}


def operations(app: FastAPI, path: str) -> list:
    schema = schemathesis.openapi.from_asgi(path, app)
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("name", sorted(APPS))
def test_every_operation_answers_without_5xx_and_as_documented(name: str, live_recommender: dict) -> None:
    build, path = APPS[name]
    failures: dict[str, str] = {}
    calls: dict[str, int] = {}
    statuses: dict[str, set[int]] = {}
    ops = operations(build(live_recommender["settings"]), path)
    assert ops, name
    for operation in ops:
        @EXAMPLES
        @given(case=operation.as_strategy())
        def check(case) -> None:
            response = case.call_and_validate(headers=KEY, checks=CHECKS)
            key = f"{case.method} {case.operation.path}"
            calls[key] = calls.get(key, 0) + 1
            statuses.setdefault(key, set()).add(response.status_code)

        try:
            check()
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure, then report them all
            failures[f"{operation.method.upper()} {operation.path}"] = str(exc)[:1500]
    assert not failures, "\n\n".join(f"{op}:\n{why}" for op, why in failures.items())
    assert len(calls) == len(ops) and min(calls.values()) >= 1, calls  # every operation was exercised
    print(f"\n{name}: " + ", ".join(f"{op} x{n} {sorted(statuses[op])}" for op, n in sorted(calls.items())))
