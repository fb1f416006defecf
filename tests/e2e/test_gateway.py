"""The local gateway as a user meets it: HTTP routes, failures, drop-folder files, schedules."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote_plus

import httpx
import pytest

from nimbus.config import Settings
from nimbus.local import gateway as gateway_module
from nimbus.local.gateway import Gateway, GatewayOptions, serving
from nimbus.local.serverless import FunctionSpec, HttpRoute, Project, S3Trigger, Schedule, load_project
from nimbus.stores.objects import ObjectStore
from tests import gateway_fns

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
TEST_PROJECT = ROOT / "tests" / "data" / "project"


@pytest.fixture
def drop_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "drop.log"
    monkeypatch.setenv("T_DROP_LOG", str(log))
    return log


@pytest.fixture
def test_gateway(clean_stack: Settings, drop_log: Path) -> Iterator[tuple[Gateway, str]]:
    gateway = Gateway(load_project(TEST_PROJECT), clean_stack, GatewayOptions(schedules=False))
    with serving(gateway.app) as url:
        yield gateway, url


def logged(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def wait_for(check, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    return check()


def test_health_through_the_gateway_reports_every_store(clean_stack: Settings) -> None:
    gateway = Gateway(load_project(ROOT), clean_stack, GatewayOptions(schedules=False, watch=False))
    with serving(gateway.app) as url:
        answer = httpx.get(f"{url}/health", timeout=30)
        missing = httpx.get(f"{url}/nope", timeout=30)
    assert answer.status_code == 200
    assert [s["store"] for s in answer.json()["stores"] if s["up"]] == ["redis", "mongodb", "s3", "mlflow"]
    assert missing.status_code == 404


def test_requests_reach_handlers_as_api_gateway_v2_events(test_gateway: tuple[Gateway, str]) -> None:
    _, url = test_gateway
    answer = httpx.post(f"{url}/echo/a/b?x=1&x=2&y=3", content=b'{"k": 1}', headers={"X-Trace": "t1"}, timeout=30)
    assert answer.status_code == 200
    payload = answer.json()
    event = payload["event"]
    assert payload["function"] == "echo" and 0 < payload["remaining_ms"] <= 5000
    assert event["version"] == "2.0" and event["routeKey"] == "ANY /echo/{proxy+}"
    assert event["rawPath"] == "/echo/a/b" and event["pathParameters"] == {"proxy": "a/b"}
    assert event["queryStringParameters"] == {"x": "1,2", "y": "3"}
    assert event["headers"]["x-trace"] == "t1" and event["body"] == '{"k": 1}'
    assert event["requestContext"]["http"]["method"] == "POST"


def test_binary_bodies_arrive_base64_encoded(test_gateway: tuple[Gateway, str]) -> None:
    _, url = test_gateway
    event = httpx.put(f"{url}/echo/bin", content=b"\xff\x00\xfe", timeout=30).json()["event"]
    assert event["isBase64Encoded"] is True and event["body"] == "/wD+"


def test_a_failing_handler_is_a_500_that_leaks_nothing(test_gateway: tuple[Gateway, str]) -> None:
    _, url = test_gateway
    answer = httpx.get(f"{url}/boom", timeout=30)
    assert answer.status_code == 500
    assert answer.json() == {"message": "Internal Server Error"}


def test_a_handler_past_its_timeout_is_a_504(test_gateway: tuple[Gateway, str]) -> None:
    _, url = test_gateway
    answer = httpx.get(f"{url}/slow", timeout=30)
    assert answer.status_code == 504


def test_oversized_bodies_are_refused_with_413(test_gateway: tuple[Gateway, str]) -> None:
    _, url = test_gateway
    answer = httpx.post(f"{url}/echo/big", content=b"x" * (gateway_module.MAX_BODY_BYTES + 1), timeout=60)
    assert answer.status_code == 413


def test_a_file_in_the_drop_folder_reaches_its_function_once(
    test_gateway: tuple[Gateway, str], clean_stack: Settings, drop_log: Path
) -> None:
    objects = ObjectStore.for_settings(clean_stack)
    key = f"{clean_stack.drop_prefix}day 1/orders+returns.csv"
    objects.put_bytes(clean_stack.data_bucket, key, b"id\n1\n")
    objects.put_bytes(clean_stack.data_bucket, f"{clean_stack.drop_prefix}notes.txt", b"not csv")  # no trigger
    events = wait_for(lambda: logged(drop_log))
    assert len(events) == 1
    [record] = events[0]["Records"]
    assert record["eventSource"] == "aws:s3" and record["s3"]["bucket"]["name"] == clean_stack.data_bucket
    time.sleep(2)  # the message is deleted after success: it is not delivered again
    assert len(logged(drop_log)) == 1


def test_a_failed_delivery_is_retried(test_gateway: tuple[Gateway, str], clean_stack: Settings, drop_log: Path) -> None:
    objects = ObjectStore.for_settings(clean_stack)
    objects.put_bytes(clean_stack.data_bucket, f"{clean_stack.drop_prefix}flaky.csv", b"id\n1\n")
    events = wait_for(lambda: len(logged(drop_log)) >= 2 and logged(drop_log), timeout_s=30)
    assert events and len(events) == 2  # failed once, delivered again, then succeeded
    gateway, _ = test_gateway
    assert [f for f in gateway.fired if f[0] == "drop"] == [("drop", f"s3://{clean_stack.data_bucket}/incoming/flaky.csv")] * 2


def test_schedules_fire_their_function_with_an_eventbridge_event(
    clean_stack: Settings, drop_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rate(1 minute) in the project; shorten the clock so the test need not wait a minute.
    monkeypatch.setattr(gateway_module, "next_fire", lambda schedule, after: after + 0.3)
    gateway = Gateway(load_project(TEST_PROJECT), clean_stack, GatewayOptions(watch=False))
    with serving(gateway.app):
        events = wait_for(lambda: len(logged(drop_log)) >= 2 and logged(drop_log), timeout_s=10)
    assert events, "the schedule never fired"
    assert events[0]["source"] == "aws.events" and events[0]["detail-type"] == "Scheduled Event"
    assert events[0]["resources"][0].endswith(":rule/nimbus-drop-schedule-0")


# ---- concurrency: a slow handler holds only its own worker -------------------------------------
EVERY_MINUTE = "rate(1 minute)"  # fired every 50 ms below: next_fire is shortened


def concurrency_project(fast_schedule: bool = True, fast_s3: tuple[S3Trigger, ...] = ()) -> Project:
    """`slow` (timeout 1 s) blocks until the test releases it; `fast` answers at once (tests/gateway_fns.py)."""
    return Project(ROOT, "nimbus-test", "us-east-1", {
        "slow": FunctionSpec("slow", "tests/gateway_fns.slow", 1, 128, http=[HttpRoute("GET", "/slow")],
                             schedules=[Schedule(EVERY_MINUTE)]),
        "fast": FunctionSpec("fast", "tests/gateway_fns.fast", 5, 128, http=[HttpRoute("GET", "/fast")],
                             schedules=[Schedule(EVERY_MINUTE)] if fast_schedule else [], s3=list(fast_s3)),
    })


@pytest.fixture
def fns(caplog: pytest.LogCaptureFixture) -> Iterator:
    caplog.set_level(logging.INFO, logger="nimbus")
    gateway_fns.reset()
    yield gateway_fns
    gateway_fns.release.set()  # never leave a worker blocked


def logged_lines(caplog: pytest.LogCaptureFixture, *parts: str) -> list[str]:
    return [m for m in caplog.messages if all(p in m for p in parts)]


def scheduled(events: list[dict]) -> list[dict]:
    return [e for e in events if e.get("detail-type") == "Scheduled Event"]


def test_a_handler_past_its_timeout_is_a_504_while_other_routes_answer(
        fns, caplog: pytest.LogCaptureFixture) -> None:
    gateway = Gateway(concurrency_project(), Settings(), GatewayOptions(schedules=False, watch=False))
    with serving(gateway.app) as url, ThreadPoolExecutor(1) as client:
        slow = client.submit(httpx.get, f"{url}/slow", timeout=60)
        assert fns.started.wait(30)
        fast = httpx.get(f"{url}/fast", timeout=30)  # answered while slow holds its worker
        assert fast.status_code == 200 and fast.text == "fast" and not fns.finished.is_set()
        assert slow.result().status_code == 504
        assert slow.result().json() == {"message": "Service Unavailable"}
        assert not fns.finished.is_set()  # the 504 did not wait for the handler, which runs on
        assert logged_lines(caplog, "function slow", "timed out after 1 s", "result will be discarded")
        fns.release.set()
        assert fns.finished.wait(30)
        assert wait_for(lambda: logged_lines(caplog, "function slow", "past its 1 s timeout; result discarded"))


def test_each_schedule_fires_on_its_own_and_an_overlapping_fire_is_skipped(
        fns, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_module, "next_fire", lambda schedule, after: after + 0.05)
    gateway = Gateway(concurrency_project(), Settings(), GatewayOptions(watch=False))
    with serving(gateway.app) as url:
        assert fns.started.wait(30)
        # While slow's run holds its worker: fast's schedule keeps firing, HTTP answers, slow's fires are skipped.
        assert wait_for(lambda: len(scheduled(fns.fast_events)) >= 3)
        assert httpx.get(f"{url}/fast", timeout=30).status_code == 200
        assert wait_for(lambda: logged_lines(caplog, "function slow", "timed out after 1 s"))
        assert wait_for(lambda: ("slow", EVERY_MINUTE) in gateway.skipped)
        assert logged_lines(caplog, f"schedule {EVERY_MINUTE} -> slow: skipped", "is still going")
        assert gateway.fired.count(("slow", EVERY_MINUTE)) == 1 and not fns.finished.is_set()
        fns.release.set()
        assert fns.finished.wait(30)
        assert wait_for(lambda: gateway.fired.count(("slow", EVERY_MINUTE)) >= 2)  # fires again once it ended
    assert scheduled(fns.fast_events)[0]["resources"][0].endswith(":rule/nimbus-fast-schedule-0")


def test_a_drop_folder_file_is_handled_while_a_schedule_runs_long(
        fns, clean_stack: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_module, "next_fire", lambda schedule, after: after + 0.05)
    trigger = S3Trigger(clean_stack.data_bucket, "s3:ObjectCreated:*", clean_stack.drop_prefix, ".csv")
    gateway = Gateway(concurrency_project(fast_schedule=False, fast_s3=(trigger,)), clean_stack)
    with serving(gateway.app):
        assert fns.started.wait(30)
        key = f"{clean_stack.drop_prefix}while-slow.csv"
        ObjectStore.for_settings(clean_stack).put_bytes(clean_stack.data_bucket, key, b"id\n1\n")
        assert fns.fast_called.wait(30)
        assert not fns.finished.is_set()  # delivered while the slow schedule's run still held its worker
        [record] = fns.fast_events[0]["Records"]
        assert unquote_plus(record["s3"]["object"]["key"]) == key  # S3 notifications URL-encode keys
