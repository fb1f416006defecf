"""The alert model's pure parts: drift verdicts per live version, the dedup key, the delivered payload."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from nimbus.alerts import Signal, drift_signals, targets
from nimbus.alerts.delivery import payload
from nimbus.config import Settings


def check(version: str, status: str = "ok", drifted: bool = False) -> dict:
    return {"model": "m", "model_version": version, "status": status, "samples": 500, "drifted": drifted,
            "features": [{"name": "item_price", "drifted": drifted}, {"name": "user_ctr", "drifted": False}],
            "score": {"drifted": False}, "thresholds": {"psi": 0.1, "p_value": 0.05}}


def test_drift_gives_a_verdict_only_where_the_check_ran() -> None:
    signals = drift_signals([check("1", drifted=True), check("2"), check("3", status="insufficient_samples")])
    assert [(s.key, s.firing) for s in signals] == [("drift:model:m:v1", True), ("drift:model:m:v2", False),
                                                     ("drift:model:m:v3", None)]
    assert "item_price" in signals[0].summary and "user_ctr" not in signals[0].summary


def test_the_dedup_key_is_kind_and_subject() -> None:
    assert Signal("error_rate", "function:recommend", True).key == "error_rate:function:recommend"


def test_targets_are_the_configured_ones() -> None:
    assert targets(Settings(alert_webhook_url="", alert_sns_topic_arn="")) == []
    assert targets(Settings(alert_webhook_url="http://127.0.0.1:9/x",
                            alert_sns_topic_arn="arn:aws:sns:us-east-1:000000000000:t")) == ["webhook", "sns"]


def test_the_payload_names_the_alert_and_leaves_out_delivery_state() -> None:
    at = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    doc = {"key": "job_failed:batch:abc", "kind": "job_failed", "subject": "batch:abc", "state": "firing",
           "severity": "critical", "summary": "batch run abc failed", "first_seen": at, "since": at,
           "last_seen": at, "count": 2, "pending": {"webhook": "firing"}, "last_error": "webhook: ConnectError",
           "notified_at": None}
    body = payload(doc)
    assert body["status"] == "firing" and body["key"] == "job_failed:batch:abc" and body["count"] == 2
    assert body["since"] == "2026-11-26T09:00:00Z" and body["resolved_at"] is None
    assert not {"pending", "last_error", "notified_at"} & set(body)
    json.dumps(body)  # JSON as it is
