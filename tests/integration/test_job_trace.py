"""Traces that leave the request: pymongo's commands as client spans, an AutoML job submitted over HTTP
whose runner, later and elsewhere, continues the submitter's trace (the W3C context kept in the job's
document), and a batch run continuing the trace its CloudEvent carried. The SDK's in-memory exporter;
the real MongoDB-wire server, S3 emulator, MLflow and Spark (local)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pymongo.errors import OperationFailure

from nimbus import tracing
from nimbus.config import Settings
from nimbus.stores.documents import Collections, DocumentStore
from nimbus.stores.objects import ObjectStore

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
KEY = {"X-API-Key": "nimbus-local-key"}  # the local stack's key (admin: every scope)
SECRET = "s3cr3t-value-0042"  # a value in a filter and a document: never in a span
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.use(TracerProvider(), SimpleSpanProcessor(exporter))
    yield exporter
    tracing.stop()


def fresh_store(settings: Settings) -> DocumentStore:
    """A client made after tracing was turned on, as a process's first store is (pymongo gives a listener
    only to clients made after it is registered; the session's cached ones predate this test's tracing)."""
    return DocumentStore(settings.mongo_url, settings.mongo_db, settings.store_timeout_s)


def mongo_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.attributes.get("db.system") == "mongodb"]


def test_a_mongodb_command_in_a_trace_is_a_client_span_without_its_values(
        clean_stack: Settings, spans: InMemorySpanExporter) -> None:
    store = fresh_store(clean_stack)
    things = store.collection("trace_things")
    things.insert_one({"_id": "a", "token": SECRET})  # outside any trace: no span (heartbeats, polls)
    assert mongo_spans(spans) == []
    with tracing.span("parent") as parent:
        assert things.find_one({"token": SECRET})["_id"] == "a"
        things.update_one({"_id": "a"}, {"$set": {"token": SECRET + "!"}})
        with pytest.raises(OperationFailure):
            store.db.command("noSuchCommandHere")
    found, updated, failed = mongo_spans(spans)
    for span in (found, updated, failed):
        assert span.kind.name == "CLIENT" and span.parent.span_id == parent.get_span_context().span_id
        assert span.attributes["db.name"] == clean_stack.mongo_db
        assert span.attributes["net.peer.name"] == "127.0.0.1"
        assert span.attributes["net.peer.port"] == int(clean_stack.mongo_url.rsplit(":", 1)[1].strip("/"))
        assert SECRET not in repr(dict(span.attributes)) + repr(span.status.description)
        assert "db.statement" not in span.attributes
    assert (found.name, found.attributes["db.operation"], found.attributes["db.mongodb.collection"]) == (
        "find trace_things", "find", "trace_things")
    assert (updated.name, updated.attributes["db.operation"]) == ("update trace_things", "update")
    assert found.status.is_ok and updated.status.is_ok
    assert failed.attributes["db.operation"] == "noSuchCommandHere" and not failed.status.is_ok
    assert failed.attributes["error.type"]


def test_after_stop_a_registered_listener_makes_no_spans(clean_stack: Settings, spans: InMemorySpanExporter,
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    store = fresh_store(clean_stack)
    tracing.stop()
    elsewhere = InMemorySpanExporter()
    other = TracerProvider()
    other.add_span_processor(SimpleSpanProcessor(elsewhere))
    with other.get_tracer("another").start_as_current_span("theirs"):  # a context, but Nimbus traces no more
        store.collection("trace_things").find_one({})
    assert [s.name for s in elsewhere.get_finished_spans()] == ["theirs"]
    tracing.use(TracerProvider(), SimpleSpanProcessor(spans))
    assert mongo_spans(spans) == []
    with tracing.span("parent"):
        store.collection("trace_things").find_one({})  # the same listener, the new provider
    assert [s.name for s in mongo_spans(spans)] == ["find trace_things"]
    assert "Traceback" not in capfd.readouterr().err  # pymongo prints what a listener raises, and goes on


LISTENERS = """
import pymongo, pymongo.monitoring
from nimbus import tracing
print(tracing.configure(), len(pymongo.monitoring._LISTENERS.command_listeners),
      len(pymongo.MongoClient("mongodb://127.0.0.1:1/", connect=False).options.event_listeners))
"""


@pytest.mark.parametrize(("otel", "printed"), [({}, "False 0 0"),
                                               ({"OTEL_TRACES_EXPORTER": "console"}, "True 1 1")])
def test_pymongo_gets_a_listener_only_when_tracing_is_on(otel: dict[str, str], printed: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | otel
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "shared"), str(ROOT)])
    out = subprocess.run([sys.executable, "-c", LISTENERS], env=env, capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == printed, out


@pytest.mark.slow
def test_a_job_submitted_over_http_runs_in_the_submitters_trace(
        clean_stack: Settings, spans: InMemorySpanExporter) -> None:
    from nimbus.api.automl import create_automl_app
    from nimbus.automl.runner import run_job

    frame = pd.DataFrame({"x": [i % 17 for i in range(200)], "z": [i % 5 for i in range(200)],
                          "y": [int(i % 17 > 8) for i in range(200)]})
    ObjectStore.for_settings(clean_stack).put_bytes(clean_stack.data_bucket, "datasets/traced.csv",
                                                    frame.to_csv(index=False).encode())
    with TestClient(create_automl_app(), headers=KEY) as http:  # built with tracing on: FastAPI instrumented
        answer = http.post("/automl/jobs", headers={"traceparent": TRACEPARENT},
                           json={"dataset": f"s3://{clean_stack.data_bucket}/datasets/traced.csv", "target": "y",
                                 "budget_s": 10, "include": ["logistic"]})
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job_id"]
    doc = DocumentStore.for_settings(clean_stack).collection(Collections.AUTOML_JOBS).find_one({"_id": job_id})
    assert doc["trace"]["traceparent"].split("-")[1] == TRACE_ID
    server = next(s for s in spans.get_finished_spans() if s.kind.name == "SERVER")
    assert f"{server.context.trace_id:032x}" == TRACE_ID

    spans.clear()
    run_job(clean_stack, job_id)  # later, as a runner process does: no context of its own
    finished = spans.get_finished_spans()
    job = next(s for s in finished if s.name == "automl.job")
    assert f"{job.context.trace_id:032x}" == TRACE_ID
    assert job.parent.span_id == int(doc["trace"]["traceparent"].split("-")[2], 16)  # the submitter's span
    assert job.attributes["nimbus.job_id"] == job_id
    steps = {s.name for s in finished if s.parent is not None and s.parent.span_id == job.context.span_id}
    assert {"automl.prepare", "automl.search", "automl.refit", "automl.evaluate", "automl.explain_export",
            "automl.register", "automl.publish"} <= steps, steps


def test_a_job_submitted_without_tracing_records_no_context(clean_stack: Settings) -> None:
    from nimbus.automl.jobs import JobRequest, submit

    frame = pd.DataFrame({"x": range(40), "y": [0, 1] * 20})
    ObjectStore.for_settings(clean_stack).put_bytes(clean_stack.data_bucket, "datasets/plain.csv",
                                                    frame.to_csv(index=False).encode())
    doc = submit(clean_stack, JobRequest(dataset=f"s3://{clean_stack.data_bucket}/datasets/plain.csv", target="y",
                                         budget_s=10), owner="test")
    assert "trace" not in doc


@pytest.mark.slow
def test_a_batch_run_continues_the_trace_its_cloudevent_carried(
        batch_stack: Settings, spans: InMemorySpanExporter) -> None:
    from nimbus.batch.examples import write_records
    from nimbus.batch.trigger import handle
    from nimbus.events import parse

    bucket, key = batch_stack.data_bucket, f"{batch_stack.drop_prefix}traced.parquet"
    write_records(batch_stack, f"s3://{bucket}/{key}", 300)
    event = {"specversion": "1.0", "id": "t-1", "type": "google.cloud.storage.object.v1.finalized",
             "source": f"//storage.googleapis.com/projects/_/buckets/{bucket}", "traceparent": TRACEPARENT,
             "data": {"bucket": bucket, "name": key}}
    [result] = handle(parse(event), batch_stack)
    assert result["status"] == "succeeded", result
    finished = spans.get_finished_spans()
    run = next(s for s in finished if s.name == "batch.run")
    assert f"{run.context.trace_id:032x}" == TRACE_ID and run.parent.span_id == int(TRACEPARENT.split("-")[2], 16)
    steps = {s.name for s in finished if s.parent is not None and s.parent.span_id == run.context.span_id}
    assert {"batch.check_schema", "batch.score", "batch.write", "batch.report", "batch.audit"} <= steps, steps
