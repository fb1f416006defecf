"""Where alerts go: a webhook (JSON POST) and an SNS topic; one function per target.

Each takes the payload of one alert change (:func:`payload`) and raises on any failure —
the caller (``nimbus.alerts.deliver_pending``) keeps the change pending and retries it at the next
evaluation. The payload holds the alert's identity, state, times, count and summary: no
data values, no settings, no secrets.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from nimbus.config import Settings

PAYLOAD_VERSION = 1


def payload(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body delivered for one alert change (the README's "Alerts" shows one)."""
    from nimbus.alerts import public

    alert = public(doc)
    for private in ("pending", "last_error", "notified_at"):
        alert.pop(private)
    return {"version": PAYLOAD_VERSION, "source": "nimbus", "status": alert["state"], **alert}


class _HideUrl(logging.Filter):
    """httpx logs each request's URL at INFO; a webhook URL is often a credential (chat webhooks)."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def filter(self, record: logging.LogRecord) -> bool:
        return self.url not in str(record.args)


_hidden: set[str] = set()


def webhook(settings: Settings, body: Mapping[str, Any]) -> None:
    """POST ``body`` as JSON to ``alert_webhook_url``; a non-2xx answer is a failure."""
    import httpx  # already a dependency (FastAPI's test client, MLflow); keeps timeouts explicit

    assert settings.alert_webhook_url
    if settings.alert_webhook_url not in _hidden:
        logging.getLogger("httpx").addFilter(_HideUrl(settings.alert_webhook_url))
        _hidden.add(settings.alert_webhook_url)
    response = httpx.post(settings.alert_webhook_url, json=body, timeout=settings.alert_webhook_timeout_s,
                          headers={"User-Agent": "nimbus-alerts"})
    response.raise_for_status()


def sns(settings: Settings, body: Mapping[str, Any]) -> None:
    """Publish ``body`` (JSON text) to ``alert_sns_topic_arn`` through the project's AWS endpoint."""
    from nimbus.stores.objects import aws_client

    assert settings.alert_sns_topic_arn
    subject = f"[{body['status'].upper()}] nimbus {body['kind']} {body['subject']}"[:100]  # SNS: 100 chars
    aws_client("sns", settings).publish(
        TopicArn=settings.alert_sns_topic_arn, Message=json.dumps(body), Subject=subject,
        MessageAttributes={"kind": {"DataType": "String", "StringValue": body["kind"]},
                           "status": {"DataType": "String", "StringValue": body["status"]}})


DELIVERERS: dict[str, Callable[[Settings, Mapping[str, Any]], None]] = {"webhook": webhook, "sns": sns}
