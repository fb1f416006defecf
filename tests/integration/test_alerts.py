"""Alerts against the real stack: an error burst recorded by the traffic rollup fires one alert that
is delivered once to a local webhook receiver, re-delivered only after the re-notify interval, and
resolved (delivered once) when the errors fall under the threshold; a webhook that is down gets the
alert at the next evaluation; SNS delivers through the S3/SQS emulator to a subscribed SQS queue;
the dashboard and the CLI show the alerts with their state.

Batch runs and AutoML jobs are planted as the documents their jobs write (``batch_runs``,
``automl_jobs``), so these tests need neither Spark nor Ray.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient

from nimbus import alerts
from nimbus.api.dashboard import create_dashboard_app
from nimbus.config import Settings
from nimbus.local.stack import free_port
from nimbus.monitoring.traffic import FunctionTraffic, flush_all
from nimbus.stores.documents import Collections, DocumentStore
from nimbus.stores.objects import aws_client
from tests.e2e.test_cli import run

pytestmark = pytest.mark.integration
KEY = {"X-API-Key": "nimbus-local-key"}  # the local stack's key (admin: every scope)


class Receiver:
    """A webhook receiver on 127.0.0.1 (a free port): keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def serve(settings: Settings, function: str, errors: int, ok: int) -> None:
    """Record answers as the apps' middleware does, and flush them into the Redis rollup."""
    traffic = FunctionTraffic(function, settings)
    for i in range(errors + ok):
        traffic.record("/recommendations/{user_id}", "GET", 500 if i < errors else 200, 0.004)
    flush_all()


def plant_batch_run(settings: Settings, key: str, status: str, records: int, quarantined: int) -> None:
    DocumentStore.for_settings(settings).collection(Collections.BATCH_RUNS).update_one(
        {"_id": key}, {"$set": {"status": status, "started_at": datetime.now(UTC),
                                "counts": {"records": records, "scored": records - quarantined,
                                           "quarantined": quarantined}}}, upsert=True)


def test_an_error_burst_fires_once_is_reminded_after_the_interval_and_resolves_once(
        clean_stack: Settings, receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="httpx")  # httpx logs each request's URL at INFO
    settings = clean_stack.model_copy(update={"alert_webhook_url": receiver.url, "alert_renotify_s": 600})
    serve(settings, "recommend", errors=30, ok=0)
    t0 = datetime.now(UTC)

    assert alerts.evaluate(settings, now=t0) == {"changed": 1, "delivered": 1, "failed": 0, "skipped": []}
    (body,) = receiver.bodies
    assert (body["status"], body["kind"], body["subject"], body["count"]) == ("firing", "error_rate",
                                                                              "function:recommend", 1)
    assert "100.0% of 30 requests" in body["summary"]

    assert alerts.evaluate(settings, now=t0 + timedelta(seconds=60))["delivered"] == 0  # the same alert: no resend
    (alert,) = alerts.list_alerts(settings)  # one document per dedup key; p99 (4 ms) fired nothing
    assert (alert["key"], alert["state"], alert["count"]) == ("error_rate:function:recommend", "firing", 2)
    assert alert["since"] == alert["first_seen"] and alert["pending"] == []

    alerts.evaluate(settings, now=t0 + timedelta(seconds=700))  # still firing, past the re-notify interval
    assert [b["status"] for b in receiver.bodies] == ["firing", "firing"] and receiver.bodies[1]["count"] == 3

    serve(settings, "recommend", errors=0, ok=2000)  # 30 of 2030 failed: 1.5% < 5%
    alerts.evaluate(settings, now=t0 + timedelta(seconds=760))
    alerts.evaluate(settings, now=t0 + timedelta(seconds=820))
    assert [b["status"] for b in receiver.bodies] == ["firing", "firing", "resolved"]
    (alert,) = alerts.list_alerts(settings)
    assert alert["state"] == "resolved" and alert["resolved_at"] and alert["count"] == 3
    assert "alert firing: error_rate:function:recommend" in caplog.text  # what the log says
    assert receiver.url not in caplog.text  # a webhook URL may be a credential: never logged


def test_a_webhook_that_is_down_gets_the_alert_at_the_next_evaluation(clean_stack: Settings,
                                                                       receiver: Receiver) -> None:
    down = clean_stack.model_copy(update={"alert_webhook_url": f"http://127.0.0.1:{free_port()}/hook",
                                          "alert_webhook_timeout_s": 2.0})
    plant_batch_run(down, "run-1", "failed", records=100, quarantined=30)

    assert alerts.evaluate(down) == {"changed": 2, "delivered": 0, "failed": 2, "skipped": []}  # no raise
    stored = {a["key"]: a for a in alerts.list_alerts(down)}
    assert set(stored) == {"job_failed:batch:run-1", "batch_bad_records:batch:run-1"}
    assert all(a["pending"] == ["webhook"] and a["last_error"] == "webhook: ConnectError" for a in stored.values())
    assert "30 of 100 records quarantined" in stored["batch_bad_records:batch:run-1"]["summary"]

    up = clean_stack.model_copy(update={"alert_webhook_url": receiver.url})
    assert alerts.evaluate(up)["delivered"] == 2
    assert sorted((b["key"], b["status"]) for b in receiver.bodies) == [
        ("batch_bad_records:batch:run-1", "firing"), ("job_failed:batch:run-1", "firing")]
    assert all(a["pending"] == [] and a["last_error"] is None for a in alerts.list_alerts(up))

    plant_batch_run(up, "run-1", "succeeded", records=100, quarantined=1)  # the rerun of the same run key
    assert alerts.evaluate(up)["delivered"] == 2
    assert sorted(b["status"] for b in receiver.bodies[2:]) == ["resolved", "resolved"]


def test_sns_delivers_through_the_emulator_to_a_subscribed_queue_once(clean_stack: Settings) -> None:
    sns, sqs = aws_client("sns", clean_stack), aws_client("sqs", clean_stack)
    topic = sns.create_topic(Name="nimbus-alerts-test")["TopicArn"]
    queue = sqs.create_queue(QueueName="nimbus-alerts-test")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    settings = clean_stack.model_copy(update={"alert_sns_topic_arn": topic})
    jobs = DocumentStore.for_settings(settings).collection(Collections.AUTOML_JOBS)
    jobs.insert_one({"_id": "job-1", "status": "failed", "created_at": datetime.now(UTC)})

    def delivered() -> list[dict]:
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        for m in messages:
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
        return [json.loads(json.loads(m["Body"])["Message"]) for m in messages]  # the SNS envelope, then ours

    try:
        assert alerts.evaluate(settings)["delivered"] == 1
        (body,) = delivered()
        assert (body["status"], body["key"]) == ("firing", "job_failed:automl:job-1")
        assert alerts.evaluate(settings)["delivered"] == 0 and delivered() == []  # fired twice: one delivery

        jobs.update_one({"_id": "job-1"}, {"$set": {"created_at": datetime.now(UTC) - timedelta(days=2)}})
        alerts.evaluate(settings)  # past the look-back: no longer reported, so resolved
        (body,) = delivered()
        assert (body["status"], body["key"]) == ("resolved", "job_failed:automl:job-1")
    finally:
        sqs.delete_queue(QueueUrl=queue)
        sns.delete_topic(TopicArn=topic)


def test_the_dashboard_and_the_cli_show_alerts_with_their_state(clean_stack: Settings) -> None:
    plant_batch_run(clean_stack, "run-2", "failed", records=10, quarantined=0)
    alerts.evaluate(clean_stack)
    client = TestClient(create_dashboard_app(), headers=KEY)
    (alert,) = client.get("/dashboard/alerts").json()
    assert (alert["key"], alert["state"], alert["count"]) == ("job_failed:batch:run-2", "firing", 1)
    assert client.get("/dashboard/alerts", params={"state": "resolved"}).json() == []
    assert client.get("/dashboard/alerts", params={"state": "gone"}).status_code == 422
    assert TestClient(create_dashboard_app()).get("/dashboard/alerts").status_code == 401
    assert client.get("/dashboard/data").json()["alerts"] == [alert]

    listed = run(["alerts", "list", "--json"])
    assert listed.returncode == 0, listed.stderr
    assert [a["key"] for a in json.loads(listed.stdout)] == ["job_failed:batch:run-2"]
    table = run(["alerts", "list"])
    assert table.returncode == 0 and "1 firing" in table.stdout and "job_failed" in table.stdout
    bad = run(["alerts", "list", "--state", "gone"])
    assert bad.returncode != 0 and "state must be firing or resolved" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr
