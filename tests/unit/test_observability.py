"""Request ids, request log lines and what they must never hold (no stores: an app of create_app in-process)."""

from __future__ import annotations

import io
import logging
import sys
from typing import Annotated

import orjson
import pytest
from fastapi import Body
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nimbus import logs, tracing
from nimbus.api.common import create_app
from nimbus.config import Settings
from nimbus.ids import REQUEST_ID_LEN, RequestSigner, is_request_id, new_request_id, request_id_for

SECRET_KEY = "nimbus-local-key"
PAYLOAD = "a-very-private-user-payload-4f1c"


@pytest.mark.parametrize("header", ["abcdef12", "req_2026-12-04_0001", "A" * 64,
                                    "3fa85f64-5717-4562-b3fc-2c963f66afa6"])
def test_a_usable_x_request_id_is_kept(header: str) -> None:
    assert request_id_for(header, "gw-request-0001") == header


@pytest.mark.parametrize("header", [None, "", "short", "A" * 65, "has space 123", "dot.ted.id", "semi;colon1",
                                    "new\nline-injected", "ünicode-id-01", "<script>alert(1)</script>"])
def test_a_missing_or_unsafe_x_request_id_gives_way(header: str | None) -> None:
    assert request_id_for(header, "gw-request-0001") == "gw-request-0001"  # API Gateway's, when present
    generated = request_id_for(header)
    assert generated != header and is_request_id(generated) and len(generated) == 24


def test_api_gateways_base64_request_id_loses_its_padding_and_a_bad_one_is_replaced() -> None:
    assert request_id_for(None, "JbQ3-gHGoAMEMxw=") == "JbQ3-gHGoAMEMxw"
    assert is_request_id(request_id_for(None, "no/slash+allowed"))
    assert request_id_for(None, "no/slash+allowed") != "no/slash+allowed"


def test_the_answer_id_is_the_request_id_signed_for_its_user() -> None:
    signer = RequestSigner("s3cret")
    rid = new_request_id()
    answer = signer.issue("alice", rid)
    assert answer.split(".")[0] == rid and len(answer) == REQUEST_ID_LEN
    assert signer.verify(answer, "alice") and not signer.verify(answer, "bob")
    caller_chosen = signer.issue("alice", "caller-chosen_id-42")
    assert caller_chosen.startswith("caller-chosen_id-42.") and signer.verify(caller_chosen, "alice")
    assert signer.issue("alice", "not usable!").split(".")[0] != "not usable!"


@pytest.fixture
def logged() -> io.StringIO:
    stream = io.StringIO()
    logs.configure(Settings(log_level="INFO", log_format="json"), stream=stream, force=True)
    yield stream
    logs.configure(Settings(), force=True)


@pytest.fixture
def client() -> TestClient:
    app = create_app("Nimbus probe", "A probe.", function="probe")

    @app.post("/probe/{user_id}")
    def probe(user_id: str, body: Annotated[dict, Body()]) -> dict:
        return {"ok": True}

    with TestClient(app) as c:
        yield c


def lines(stream: io.StringIO) -> list[dict]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


def request_lines(stream: io.StringIO) -> list[dict]:
    return [line for line in lines(stream) if line.get("event") == "request"]


def test_each_request_is_one_json_line_with_the_request_fields(client: TestClient, logged: io.StringIO) -> None:
    answer = client.post("/probe/u42", json={"a": 1}, headers={"X-Request-Id": "trace-me-0001"})
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "trace-me-0001"
    (line,) = request_lines(logged)
    assert line["function"] == "probe" and line["route"] == "/probe/{user_id}" and line["method"] == "POST"
    assert line["status"] == 200 and line["request_id"] == "trace-me-0001" and line["level"] == "info"
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0 and line["ts"].endswith("Z")
    assert line["trace_id"] is None  # tracing is off without OTEL_*


def test_a_request_without_an_id_gets_a_new_one_back(client: TestClient, logged: io.StringIO) -> None:
    answer = client.post("/probe/u42", json={}, headers={"X-Request-Id": "bad id; drop table"})
    rid = answer.headers["x-request-id"]
    assert rid != "bad id; drop table" and is_request_id(rid)
    assert request_lines(logged)[0]["request_id"] == rid


def test_refused_and_unmatched_requests_are_logged_too(client: TestClient, logged: io.StringIO) -> None:
    assert client.post("/probe/u42", content=b"x" * (2 << 20), headers={"content-type": "application/json"}
                       ).status_code == 413
    assert client.get("/nowhere").status_code == 404
    assert [(r["status"], r["route"]) for r in request_lines(logged)] == [(413, "unmatched"), (404, "unmatched")]


def test_no_key_and_no_payload_reach_the_log(client: TestClient, logged: io.StringIO) -> None:
    answer = client.post(f"/probe/u42?secret={PAYLOAD}", json={"note": PAYLOAD},
                         headers={"X-API-Key": SECRET_KEY, "Authorization": f"Bearer {SECRET_KEY}",
                                  "Cookie": f"session={PAYLOAD}"})
    assert answer.status_code == 200
    text = logged.getvalue()
    assert request_lines(logged) and SECRET_KEY not in text and PAYLOAD not in text


def test_fields_named_like_secrets_are_dropped_whatever_a_caller_logs(logged: io.StringIO) -> None:
    logs.JOBS.info("job step", extra={"job_id": "j1", "api_key": SECRET_KEY, "password": "p", "rows": 3})
    (line,) = lines(logged)
    assert line["job_id"] == "j1" and line["rows"] == 3 and "api_key" not in line and "password" not in line


def test_a_job_step_logs_its_key_counts_and_duration(logged: io.StringIO) -> None:
    with logs.step("batch", "run-1", "score", models=2) as counts:
        counts["records"] = 10
    (line,) = lines(logged)
    assert (line["event"], line["run_key"], line["step"], line["models"], line["records"], line["status"]) == (
        "job step", "run-1", "score", 2, 10, "ok")
    assert line["duration_ms"] >= 0


def test_text_format_and_level_are_settings() -> None:
    stream = io.StringIO()
    logs.configure(Settings(log_level="warning", log_format="TEXT"), stream=stream, force=True)
    try:
        logs.REQUESTS.info("below-the-level", extra={"status": 200})
        logs.REQUESTS.warning("at-the-level", extra={"status": 201})
    finally:
        logs.configure(Settings(), force=True)
    out = stream.getvalue()
    assert "below-the-level" not in out and "at-the-level" in out and "status=201" in out
    assert not out.lstrip().startswith("{")


@pytest.mark.parametrize(("env", "wanted"), [
    ({}, None), ({"OTEL_TRACES_EXPORTER": "none"}, None), ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, "otlp"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, None),
    ({"OTEL_SERVICE_NAME": "nimbus"}, None),
])
def test_tracing_is_on_only_when_an_otel_exporter_is_configured(env: dict, wanted: str | None) -> None:
    assert tracing.exporter_wanted(env) == wanted


def test_off_tracing_does_no_span_work() -> None:
    assert not tracing.enabled()
    assert tracing.span("a") is tracing.span("b")  # one shared no-op context
    assert tracing.trace_id() is None and tracing.inject({}) == {}


@pytest.fixture
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    tracing.use(TracerProvider(), SimpleSpanProcessor(exporter))
    yield exporter
    tracing.stop()


def test_a_job_step_is_a_span_with_its_counts_and_its_line_names_the_trace(
    spans: InMemorySpanExporter, logged: io.StringIO
) -> None:
    with tracing.span("batch.run"), logs.step("batch", "run-7", "write") as counts:
        counts["mongodb_written"] = 5
    step, run = spans.get_finished_spans()
    assert (step.name, run.name) == ("batch.write", "batch.run") and step.parent.span_id == run.context.span_id
    assert step.attributes["nimbus.run_key"] == "run-7" and step.attributes["nimbus.mongodb_written"] == 5
    (line,) = lines(logged)
    assert line["trace_id"] == f"{step.context.trace_id:032x}"


def test_a_submitted_job_gets_the_traceparent_and_continues_the_trace(spans: InMemorySpanExporter) -> None:
    with tracing.span("automl.submit") as parent:
        env = tracing.job_env({"NIMBUS_RAY_ADDRESS": "auto"})
    trace_id = f"{parent.get_span_context().trace_id:032x}"
    assert env["NIMBUS_RAY_ADDRESS"] == "auto" and env["TRACEPARENT"].split("-")[1] == trace_id
    with tracing.attached(tracing.from_env(env)), tracing.span("automl.job"):
        pass
    job = next(s for s in spans.get_finished_spans() if s.name == "automl.job")
    assert f"{job.context.trace_id:032x}" == trace_id and job.parent.span_id == parent.get_span_context().span_id


def test_off_a_job_env_is_left_as_it_is() -> None:
    assert tracing.job_env({"A": "1"}) == {"A": "1"} and tracing.from_env({}) == {}


def test_on_lambda_api_gateways_request_id_is_the_request_id(logged: io.StringIO) -> None:
    from nimbus.api.common import lambda_handler

    app = create_app("Nimbus probe", "A probe.", function="probe")

    @app.get("/probe/{user_id}")
    def probe(user_id: str) -> dict:
        return {"ok": True}

    event = {"version": "2.0", "routeKey": "GET /probe/{user_id}", "rawPath": "/probe/u1", "rawQueryString": "",
             "headers": {"host": "x.execute-api.us-east-1.amazonaws.com", "x-api-key": SECRET_KEY},
             "requestContext": {"requestId": "JbQ3-gHGoAMEMxw=", "stage": "$default", "http": {
                 "method": "GET", "path": "/probe/u1", "protocol": "HTTP/1.1", "sourceIp": "10.0.0.1",
                 "userAgent": "curl"}}, "isBase64Encoded": False}
    answer = lambda_handler(app)(event, None)
    assert answer["statusCode"] == 200 and answer["headers"]["x-request-id"] == "JbQ3-gHGoAMEMxw"
    (line,) = request_lines(logged)
    assert line["request_id"] == "JbQ3-gHGoAMEMxw" and line["route"] == "/probe/{user_id}"
    assert SECRET_KEY not in logged.getvalue()


def _records() -> list[logging.LogRecord]:
    made = []
    for msg, args, extra, level in [
        ("request", (), {"function": "recommend", "route": "/recommendations/{user_id}", "method": "GET",
                         "status": 200, "latency_ms": 0.412, "trace_id": None, "model_version": "3",
                         "degraded": False, "experiment": None}, logging.INFO),
        ("served %d of %s", (3, "u42"), {"rows": [1, 2], "when": object(), "api_key": SECRET_KEY}, logging.WARNING),
        ("plain", (), {}, logging.ERROR),
        ("job step", (), {"request_id": "shadowed-by-the-record", "password": "p", "nested": {"a": 1.5}},
         logging.DEBUG),
    ]:
        record = logging.getLogger("nimbus.probe").makeRecord("nimbus.probe", level, __file__, 1, msg, args, None,
                                                              extra=extra)
        made.append(record)
    return made


def test_the_fast_json_lines_are_what_structlogs_chain_writes() -> None:
    fast, chain = logs.formatter("json"), logs.structlog_formatter("json")
    assert isinstance(fast, logs.JSONFormatter)
    for bound in ({}, {"request_id": "abcdef12"}):
        token = logs.bind(**bound) if bound else None
        try:
            for record in _records():
                mine, theirs = orjson.loads(fast.format(record)), orjson.loads(chain.format(record))
                assert mine.pop("ts").endswith("Z") and theirs.pop("ts").endswith("Z")
                assert list(mine.items()) == list(theirs.items())  # same fields, same values, same order
        finally:
            if token is not None:
                logs.unbind(token)


def test_a_line_with_a_traceback_goes_through_structlogs_chain() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("nimbus.probe").makeRecord("nimbus.probe", logging.ERROR, __file__, 1, "failed",
                                                              (), sys.exc_info())
    line = orjson.loads(logs.formatter("json").format(record))
    assert line["event"] == "failed" and line["exception"][0]["exc_type"] == "ValueError"
