"""One recommendation request followed from the gateway through the function to Redis by its request id:
the JSON log line, the trace (the SDK's in-memory exporter) and the exposure row all carry it."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nimbus import logs, tracing
from nimbus.config import Settings
from nimbus.ids import RequestSigner
from nimbus.local.gateway import Gateway, GatewayOptions, serving
from nimbus.local.serverless import load_project
from nimbus.stores.redis.experiments import ExperimentStore

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
HANDLER = "functions.recommend.handler"


@pytest.fixture
def observed() -> Iterator[tuple[InMemorySpanExporter, io.StringIO]]:
    """Traces into memory and JSON logs into a buffer, and the recommend handler imported afresh
    (its app is instrumented when it is built, as a process started with OTEL_* would be)."""
    exporter, stream = InMemorySpanExporter(), io.StringIO()
    tracing.use(TracerProvider(), SimpleSpanProcessor(exporter))
    logs.configure(Settings(log_format="json", log_level="INFO"), stream=stream, force=True)
    saved = sys.modules.pop(HANDLER, None)
    try:
        yield exporter, stream
    finally:
        tracing.stop()
        logs.configure(Settings(), force=True)
        rebuilt = sys.modules.pop(HANDLER, None)
        if rebuilt is not None:
            rebuilt.app.state.service.close()  # its model watcher and exposure threads
        if saved is not None:
            sys.modules[HANDLER] = saved


def test_one_request_id_joins_the_log_line_the_trace_and_the_exposure(
    live_recommender: dict, observed: tuple[InMemorySpanExporter, io.StringIO]
) -> None:
    exporter, stream = observed
    settings = live_recommender["settings"]
    user, rid = str(live_recommender["features"].user_ids[0]), "follow-me-0001"
    gateway = Gateway(load_project(ROOT), settings, GatewayOptions(schedules=False, watch=False))
    with serving(gateway.app) as url:
        answer = httpx.get(f"{url}/recommendations/{user}", params={"k": 3}, headers={"X-Request-Id": rid},
                           timeout=60)
    assert answer.status_code == 200 and answer.headers["x-request-id"] == rid
    body = answer.json()
    # the answer's id is the request id, signed for the user
    assert body["request_id"].split(".")[0] == rid
    assert RequestSigner.for_settings(settings).verify(body["request_id"], user)

    # the log line
    (line,) = [r for r in map(orjson.loads, stream.getvalue().splitlines())
               if r.get("event") == "request" and r.get("request_id") == rid]
    assert (line["function"], line["route"], line["status"]) == ("recommend", "/recommendations/{user_id}", 200)
    assert line["model_version"] == body["model_version"] and line["model_alias"] == body["model_alias"]
    assert line["degraded"] is False and line["trace_id"]

    # the trace: the gateway's span, the function's server span under it (traceparent), Redis under that
    spans = [s for s in exporter.get_finished_spans() if f"{s.context.trace_id:032x}" == line["trace_id"]]
    by_id = {s.context.span_id: s for s in spans}
    gateway_span = next(s for s in spans if s.name.startswith("gateway "))
    server = next(s for s in spans if s.kind.name == "SERVER")
    assert gateway_span.attributes["nimbus.request_id"] == rid == server.attributes["nimbus.request_id"]
    assert server.parent is not None and server.parent.span_id == gateway_span.context.span_id
    assert server.attributes["nimbus.model_version"] == body["model_version"]
    redis_spans = [s for s in spans if s.attributes.get("db.system") == "redis"
                   or s.attributes.get("db.system.name") == "redis"]
    assert redis_spans

    def under_server(s) -> bool:
        while s.parent is not None and s.parent.span_id in by_id:
            s = by_id[s.parent.span_id]
            if s is server:
                return True
        return False

    assert any(under_server(s) for s in redis_spans)

    # the exposure row in Redis (``mon:req:{request_id}``, written before the handler returned, as on
    # Lambda): what a click or purchase on this answer is joined to
    (served,) = ExperimentStore.for_settings(settings).served_records([body["request_id"]])
    assert served is not None and served["request_id"] == body["request_id"] and served["user_id"] == user
    assert served["request_id"].split(".")[0] == rid and served["model_version"] == body["model_version"]
