"""The dashboard function: page and bundled Chart.js through the gateway (as Lambda runs it), the model
versions section against a real registry, and clear answers to bad windows. The browser test is in
tests/e2e/test_dashboard.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from nimbus import governance
from nimbus.api.dashboard import STATIC, create_dashboard_app
from nimbus.config import Settings
from nimbus.dashboard import DashboardQuery, build, iso, models_section
from nimbus.local.gateway import Gateway, GatewayOptions, serving
from nimbus.local.serverless import load_project
from nimbus.local.stack import free_port
from nimbus.recommend.bundle import MODEL_NAME
from nimbus.stores.registry import Registry

KEY = {"X-API-Key": "nimbus-local-key"}  # the local stack's key (admin: every scope)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_page_and_bundled_chartjs_are_served_through_the_gateway(clean_stack: Settings) -> None:
    gateway = Gateway(load_project(ROOT), clean_stack, GatewayOptions(schedules=False, watch=False))
    with serving(gateway.app) as url:
        page = httpx.get(f"{url}/dashboard", timeout=30)
        chart = httpx.get(f"{url}/dashboard/static/chart.umd.min.js", timeout=30)
        script = httpx.get(f"{url}/dashboard/static/dashboard.js", timeout=30)
        missing = httpx.get(f"{url}/dashboard/static/nope.js", timeout=30)
        escape = httpx.get(f"{url}/dashboard/static/..%2F..%2Fconfig.py", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="dashboard/static/chart.umd.min.js"' in page.text and "http" not in page.text.split("<body")[0]
    assert chart.status_code == 200 and "javascript" in chart.headers["content-type"]
    assert chart.content == (STATIC / "chart.umd.min.js").read_bytes()  # whole, through Mangum and the gateway
    assert script.status_code == 200 and "nimbusDashboard" in script.text
    assert missing.status_code == 404 and escape.status_code == 404


def test_models_section_shows_each_version_and_when_it_went_live(live_recommender: dict) -> None:
    settings = live_recommender["settings"]
    first, second = live_recommender["versions"]  # the fixture made `first` champion
    before = time.time()
    governance.promote(settings, MODEL_NAME, second, reason="better offline AUC", who="alice")
    after = time.time()
    section = models_section(settings, DashboardQuery())
    rows = {row["version"]: row for row in section["versions"]}
    assert section["live"] == {"champion": second}
    assert rows[second]["live_aliases"] == ["champion"]
    registered = dict(Registry.for_settings(settings).client.get_registered_model(MODEL_NAME).aliases)
    assert registered["champion"] == second  # other tests of the session may have set more aliases
    for version, row in rows.items():
        assert row["aliases"] == sorted(a for a, v in registered.items() if str(v) == version)
    assert rows[first]["live_aliases"] == [] and rows[first]["went_live_at"] is not None
    assert iso(before) <= rows[second]["went_live_at"] <= iso(after) < iso(time.time() + 1)
    assert rows[first]["went_live_at"] < rows[second]["went_live_at"]
    assert [(e["alias"], e["version"]) for e in section["timeline"]][-2:] == [("champion", first), ("champion", second)]
    change, fixture_made_live = section["changes"]  # newest first: every alias move is audited
    assert (change["action"], change["from"], change["to"], change["actor"], change["reason"]) == (
        "promote", first, second, "alice", "better offline AUC")
    assert (fixture_made_live["action"], fixture_made_live["to"]) == ("promote", first)
    assert all(row["registered_at"] <= (row["went_live_at"] or "9") for row in section["versions"])


def test_bad_windows_are_clear_4xx(stack_settings: Settings) -> None:
    client = TestClient(create_dashboard_app(), headers=KEY)
    crossed = client.get("/dashboard/data", params={"traffic_window_s": 60, "traffic_bucket_s": 120})
    assert crossed.status_code == 400
    assert "traffic_bucket_s (120) must not exceed traffic_window_s (60)" in crossed.json()["detail"]
    # a window of more than 2,000 buckets is refused before any store is read
    wide = client.get("/dashboard/data", params={"traffic_window_s": 604800, "traffic_bucket_s": 10})
    assert wide.status_code == 400
    assert "traffic_window_s" in wide.json()["detail"] and "2000" in wide.json()["detail"]
    negative = client.get("/dashboard/data", params={"drift_limit": 0})
    assert negative.status_code == 422
    assert negative.json()["detail"][0]["loc"] == ["query", "drift_limit"]


def test_openapi_documents_the_data_with_an_example(stack_settings: Settings) -> None:
    spec = TestClient(create_dashboard_app()).get("/dashboard/openapi.json").json()
    answer = spec["paths"]["/dashboard/data"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    schema = spec["components"]["schemas"][answer["$ref"].rsplit("/", 1)[1]]
    [example] = schema["examples"]
    assert set(example) >= {"traffic", "experiments", "performance", "drift", "models", "errors"}
    assert json.dumps(example)  # plain JSON
    assert "/dashboard" in spec["paths"]


def test_a_store_down_blanks_only_its_sections(clean_stack: Settings) -> None:
    dead_mlflow = clean_stack.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"})
    document = build(dead_mlflow)
    assert document["models"] is None and "mlflow" in document["errors"]["models"]
    assert set(document["errors"]) == {"models"}
    assert document["traffic"] is not None and document["experiments"] == [] and document["drift"]["checks"] == []
    answer = TestClient(create_dashboard_app(), headers=KEY).get("/dashboard/data")
    assert answer.status_code == 200 and answer.json()["errors"] == {}
