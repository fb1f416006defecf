"""The health function, invoked as Lambda invokes it, against real and missing stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nimbus.config import Settings, get_settings
from nimbus.local.invoke import Invoker
from nimbus.local.serverless import load_project
from nimbus.local.stack import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
EVENT = json.loads((ROOT / "tests" / "data" / "events" / "apigw_v2_health.json").read_text())


@pytest.fixture
def invoker() -> Invoker:
    invoker = Invoker(load_project(ROOT))
    yield invoker
    invoker.close()


def test_health_reports_every_store_up(clean_stack: Settings, invoker: Invoker) -> None:
    result = invoker.invoke("health", EVENT)
    assert result.ok, result.payload
    assert result.payload["statusCode"] == 200
    body = json.loads(result.payload["body"])
    assert body["status"] == "ok"
    assert {s["store"]: s["up"] for s in body["stores"]} == {"redis": True, "mongodb": True, "s3": True, "mlflow": True}


def test_health_names_the_store_that_is_down(
    clean_stack: Settings, invoker: Invoker, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("NIMBUS_REDIS_URL", url)
    monkeypatch.setenv("NIMBUS_STORE_TIMEOUT_S", "0.5")
    get_settings.cache_clear()
    with_key = {**EVENT, "headers": {**EVENT.get("headers", {}), "x-api-key": "nimbus-local-key"}}
    try:
        public, operator = invoker.invoke("health", EVENT), invoker.invoke("health", with_key)
    finally:
        get_settings.cache_clear()
    for result in (public, operator):
        assert result.payload["statusCode"] == 503
        body = json.loads(result.payload["body"])
        assert body["status"] == "degraded"
        assert all(s["up"] for s in body["stores"] if s["store"] != "redis")
    # anyone learns which store is down, not where it lives or what failed; a read key sees both
    [redis] = [s for s in json.loads(public.payload["body"])["stores"] if s["store"] == "redis"]
    assert redis["up"] is False and redis["url"] is None and redis["detail"] == "down" and redis["info"] == {}
    assert str(url.split(":")[2].split("/")[0]) not in public.payload["body"]
    [redis] = [s for s in json.loads(operator.payload["body"])["stores"] if s["store"] == "redis"]
    assert redis["up"] is False and redis["url"] == url and redis["detail"] not in ("", "down")


def test_an_event_no_adapter_understands_is_a_clear_failure(invoker: Invoker) -> None:
    result = invoker.invoke("health", {"unexpected": "shape"})
    assert not result.ok
    assert "unable to infer" in result.payload["errorMessage"]
