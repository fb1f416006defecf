from __future__ import annotations

import base64
import time

import pytest

from nimbus.errors import ConfigError
from nimbus.local.gateway import cron_to_croniter, http_response, next_fire, starlette_path
from nimbus.local.serverless import Schedule


@pytest.mark.parametrize(
    ("aws", "five"),
    [
        ("0 2 * * ? *", "0 2 * * *"),
        ("15 10 ? * 2-6 *", "15 10 * * 1-5"),  # AWS MON-FRI is 2-6
        ("0 8 1 * ? *", "0 8 1 * *"),
        ("0/5 * ? * MON-FRI *", "0/5 * * * MON-FRI"),
        ("0 0 ? * 1,7 *", "0 0 * * 0,6"),  # SUN and SAT
    ],
)
def test_aws_cron_becomes_five_field_cron(aws: str, five: str) -> None:
    assert cron_to_croniter(aws) == five


@pytest.mark.parametrize("bad", ["0 2 * *", "0 2 L * ? *", "99 2 * * ? *"])
def test_unsupported_or_invalid_cron_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError):
        cron_to_croniter(bad)


def test_rates_fire_after_their_period() -> None:
    now = 1_000_000.0
    assert next_fire(Schedule("rate(5 minutes)"), now) == now + 300
    assert next_fire(Schedule("rate(1 hour)"), now) == now + 3600
    assert next_fire(Schedule("rate(2 days)"), now) == now + 2 * 86400


def test_cron_schedules_fire_at_the_next_matching_minute() -> None:
    start = time.mktime((2026, 1, 1, 1, 30, 0, 0, 0, 0)) - time.timezone  # 01:30 UTC
    fire = next_fire(Schedule("cron(0 2 * * ? *)"), start)
    assert fire - start == 30 * 60


@pytest.mark.parametrize("bad", ["rate(0 minutes)", "every 5 minutes", "rate(5 weeks)"])
def test_bad_schedule_expressions_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError):
        next_fire(Schedule(bad), 0.0)


def test_greedy_path_parameters_become_starlette_path_converters() -> None:
    assert starlette_path("/files/{proxy+}") == "/files/{proxy:path}"
    assert starlette_path("/users/{user_id}/items") == "/users/{user_id}/items"


def test_handler_results_become_responses_like_api_gateway() -> None:
    plain = http_response({"ok": True})
    assert plain.status_code == 200 and plain.body == b'{"ok":true}'
    full = http_response({"statusCode": 201, "headers": {"x-a": "1"}, "body": "hi", "cookies": ["a=1", "b=2"]})
    assert full.status_code == 201 and full.body == b"hi" and full.headers["x-a"] == "1"
    assert full.headers.getlist("set-cookie") == ["a=1", "b=2"]
    binary = http_response({"statusCode": 200, "isBase64Encoded": True, "body": base64.b64encode(b"\x00\xff").decode()})
    assert binary.body == b"\x00\xff"
