"""The operator's stack (infra/prometheus, infra/alertmanager, infra/grafana) against the metrics Nimbus defines.

Grafana cannot run here (no Debian package), so its dashboard is checked without it: the JSON
type-checks as Grafana's own published dashboard schema (``@grafana/schema``'s ``Dashboard``, with
TypeScript's excess-property checks, so a misspelt or unknown field fails); every panel queries the
provisioned Prometheus datasource, and every metric its PromQL names is one the code exports (the
HTTP metrics of ``monitoring.traffic`` and the store-backed ones of ``api.exporter``); with
``promtool`` present every expression is also parsed by Prometheus.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import nimbus.monitoring.traffic  # noqa: F401 - defines the HTTP metrics in the process registry
from nimbus.api import exporter

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DASHBOARD = INFRA / "grafana" / "dashboards" / "nimbus.json"
ALERTS = INFRA / "prometheus" / "alerts.yml"
NAME = re.compile(r"\bnimbus_[a-zA-Z0-9_:]*")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "gauge": ("",), "summary": ("", "_count", "_sum", "_created")}
# Grafana's own variables, replaced by what they stand for so that promtool can parse the expression.
TSC = ROOT / "node_modules" / ".bin" / "tsc"
GRAFANA_SCHEMA = ROOT / "node_modules" / "@grafana" / "schema"
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$function": ".*", "$model": ".*"}


def exported_names() -> set[str]:
    """Every sample name Nimbus's /metrics can show (the registry's families, by type, and the exporter's)."""
    names = set(exporter.EXPORTED)
    for family in REGISTRY.collect():
        if family.name.startswith("nimbus_"):
            names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return names


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel_exprs() -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_the_http_and_store_metrics_are_both_known() -> None:  # the registry walk must see what it checks against
    names = exported_names()
    assert {"nimbus_http_requests_total", "nimbus_http_request_duration_seconds_bucket",
            "nimbus_model_live_version", "nimbus_drift_psi", "nimbus_automl_jobs"} <= names


def test_every_metric_the_dashboard_queries_is_one_nimbus_exports() -> None:
    known = exported_names()
    unknown = {(title, name) for title, expr in panel_exprs() for name in NAME.findall(expr) if name not in known}
    assert panel_exprs() and unknown == set()


def test_every_metric_an_alert_rule_uses_is_one_nimbus_exports() -> None:
    known = exported_names()
    unknown = {(rule["alert"], name) for rule in rules() for name in NAME.findall(rule["expr"]) if name not in known}
    assert unknown == set()


def test_the_alert_rules_cover_errors_latency_drift_queue_and_quarantine() -> None:
    by_name = {rule["alert"]: rule for rule in rules()}
    assert {"NimbusHighErrorRate", "NimbusHighLatencyP99", "NimbusFeatureDrift", "NimbusAutoMLQueueBackedUp",
            "NimbusBatchQuarantineShare"} <= set(by_name)
    assert "> 0.2" in by_name["NimbusFeatureDrift"]["expr"]
    assert all(rule.get("annotations", {}).get("summary") for rule in rules())


def test_dashboard_panels_are_laid_out_and_query_the_provisioned_prometheus() -> None:
    board = dashboard()
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] >= 1 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    variables = {v["name"]: v for v in board["templating"]["list"]}
    datasource = yaml.safe_load((INFRA / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert variables["datasource"]["current"]["value"] == datasource["datasources"][0]["uid"]
    used = {m for _, expr in panel_exprs() for m in re.findall(r"\$(\w+)", expr)}
    assert used - {"__rate_interval", "__range"} <= set(variables)


def test_dashboard_shows_traffic_latency_errors_models_drift_and_jobs() -> None:
    queried = {name for _, expr in panel_exprs() for name in NAME.findall(expr)}
    assert {"nimbus_http_requests_total", "nimbus_http_request_errors_total",
            "nimbus_http_request_duration_seconds_bucket", "nimbus_model_live_version", "nimbus_drift_psi",
            "nimbus_automl_jobs", "nimbus_batch_records_quarantined_total"} <= queried


def test_the_exporter_reports_every_automl_status() -> None:
    from nimbus.automl.jobs import STATUSES

    assert exporter.JOB_STATUSES == STATUSES


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) is not installed")
def test_promtool_parses_every_dashboard_query_and_the_alert_rules(tmp_path: Path) -> None:
    recorded = []
    for i, (_, expr) in enumerate(panel_exprs()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        recorded.append({"record": f"nimbus:dashboard_panel_{i}", "expr": expr})
    (tmp_path / "panels.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    for path in (tmp_path / "panels.yml", ALERTS):
        result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def grafana_schema_errors(doc: dict, folder: Path) -> str:
    """What TypeScript says of ``doc`` as an object literal typed ``Dashboard`` ('' when it is one)."""
    folder.mkdir()
    (folder / "node_modules").symlink_to(ROOT / "node_modules")
    (folder / "dashboard.ts").write_text('import type { Dashboard } from "@grafana/schema";\n\n'
                                         f"export const dashboard: Dashboard = {json.dumps(doc, indent=2)};\n")
    (folder / "tsconfig.json").write_text(json.dumps({
        "compilerOptions": {"strict": True, "noEmit": True, "module": "nodenext", "moduleResolution": "nodenext",
                            "skipLibCheck": True, "types": []},
        "files": ["dashboard.ts"]}))
    done = subprocess.run([str(TSC), "-p", str(folder)], capture_output=True, text=True, timeout=120)
    return "" if done.returncode == 0 else done.stdout + done.stderr


@pytest.mark.skipif(not (TSC.exists() and GRAFANA_SCHEMA.exists()),
                    reason="typescript and @grafana/schema not installed (npm ci; make does it)")
def test_the_dashboard_is_a_dashboard_by_grafanas_own_schema(tmp_path: Path) -> None:
    assert grafana_schema_errors(dashboard(), tmp_path / "shipped") == ""
    planted = dashboard()
    planted["panels"][1]["gridpos"] = planted["panels"][1].pop("gridPos")  # a misspelt field
    planted["refresh"] = 30  # a string ("30s") in Grafana's schema
    errors = grafana_schema_errors(planted, tmp_path / "planted")
    assert "'\"gridpos\"' does not exist" in errors and "Type 'number' is not assignable to type 'string'" in errors
