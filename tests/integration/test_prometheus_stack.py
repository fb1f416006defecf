"""The operator's stack for real: Debian's Prometheus scrapes a Nimbus function, the shipped
error-rate rule fires on a planted burst of 5xx answers, and Debian's Alertmanager delivers it
to a webhook receiver this test runs.

The shipped files are checked as shipped (``promtool check config`` / ``check rules``); only the
test's copy of the error-rate rule has its 5-minute window and ``for:`` shortened to seconds,
and the test's Prometheus scrapes and evaluates every second.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from nimbus.api.health import create_health_app
from nimbus.config import Settings
from nimbus.errors import StoreUnavailable
from nimbus.local.gateway import serving
from nimbus.local.stack import free_port
from nimbus.stores.redis.live import LiveModelStore

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(not all(shutil.which(b) for b in ("prometheus", "promtool", "prometheus-alertmanager", "amtool")),
                                 reason="Debian prometheus / prometheus-alertmanager not installed (make setup)")]
ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
LOCAL_KEY = "nimbus-local-key"  # the local stack's key (admin: every scope)
RULE = "NimbusHighErrorRate"


def run(*args: str) -> str:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@contextmanager
def process(args: list[str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:  # ended by its own pid
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def wait_until(check, what: str, attempts: int = 240, pause_s: float = 0.5):
    """Poll ``check`` a bounded number of times; its first truthy answer is returned."""
    for _ in range(attempts):
        answer = check()
        if answer:
            return answer
        time.sleep(pause_s)
    raise AssertionError(f"never happened: {what}")


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[dict]]]:
    received: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server's name for it
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/alerts", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def fast_error_rule() -> dict:
    """The shipped error-rate rule with its windows in seconds (what a test can wait for)."""
    shipped = yaml.safe_load((INFRA / "prometheus" / "alerts.yml").read_text())
    rule = next(r for g in shipped["groups"] for r in g["rules"] if r.get("alert") == RULE)
    return {**rule, "expr": re.sub(r"\[5m\]", "[10s]", rule["expr"]), "for": "1s"}


def test_the_shipped_prometheus_and_alertmanager_configs_are_valid(tmp_path: Path) -> None:
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(INFRA / "prometheus" / name, tmp_path / name)
    (tmp_path / "nimbus-prometheus-key").write_text("a-read-key\n")  # compose mounts the secret beside the config
    assert "SUCCESS" in run("promtool", "check", "config", str(tmp_path / "prometheus.yml"))
    assert "SUCCESS: 6 rules found" in run("promtool", "check", "rules", str(INFRA / "prometheus" / "alerts.yml"))
    assert "SUCCESS" in run("amtool", "check-config", str(INFRA / "alertmanager" / "alertmanager.yml"))


def test_prometheus_scrapes_a_function_and_an_error_burst_reaches_the_webhook(clean_stack: Settings,
                                                                               tmp_path: Path) -> None:
    LiveModelStore.for_settings(clean_stack).set_live("nimbus-recommender", "champion", "3")
    app = create_health_app()

    @app.get("/health/planted-outage", include_in_schema=False)
    def planted_outage() -> None:
        raise StoreUnavailable("redis", "redis", "planted by the test")  # answered 503

    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "test", "rules": [fast_error_rule()]}]}))
    assert "SUCCESS: 1 rules found" in run("promtool", "check", "rules", str(tmp_path / "rules.yml"))
    (tmp_path / "key").write_text(LOCAL_KEY)
    prom_port, am_port = free_port(), free_port()

    with serving(app) as function_url, webhook_receiver() as (webhook_url, received):
        (tmp_path / "am.yml").write_text(yaml.safe_dump({
            "route": {"receiver": "webhook", "group_by": ["alertname"], "group_wait": "1s", "group_interval": "1s",
                      "repeat_interval": "1h"},
            "receivers": [{"name": "webhook", "webhook_configs": [{"url": webhook_url}]}]}))
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules.yml"],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
            "scrape_configs": [{"job_name": "nimbus", "metrics_path": "/health/metrics",
                                "authorization": {"type": "Bearer", "credentials_file": "key"},
                                "static_configs": [{"targets": [function_url.removeprefix("http://")]}]}]}))
        assert "SUCCESS" in run("promtool", "check", "config", str(tmp_path / "prometheus.yml"))
        alertmanager = ["prometheus-alertmanager", f"--config.file={tmp_path / 'am.yml'}",
                        f"--storage.path={tmp_path / 'am-data'}", f"--web.listen-address=127.0.0.1:{am_port}",
                        "--cluster.listen-address="]
        prometheus = ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                      f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"]
        with process(alertmanager, tmp_path / "am.log"), process(prometheus, tmp_path / "prom.log"), \
                httpx.Client(base_url=f"http://127.0.0.1:{prom_port}", timeout=10) as prom, \
                httpx.Client(base_url=function_url, timeout=10) as function:

            def api(path: str, **params: str) -> dict | None:
                try:
                    answer = prom.get(path, params=params)
                except httpx.TransportError:
                    return None  # not listening yet
                return answer.json()["data"] if answer.status_code == 200 else None

            target = wait_until(lambda: next((t for t in (api("/api/v1/targets") or {}).get("activeTargets", [])
                                              if t["labels"]["job"] == "nimbus" and t["health"] == "up"), None),
                                "the function's /health/metrics scraped as up")
            assert target["scrapeUrl"] == f"{function_url}/health/metrics"
            live = wait_until(lambda: (api("/api/v1/query", query='nimbus_model_live_version{alias="champion"}')
                                       or {}).get("result"), "the live model version scraped")
            assert live[0]["metric"]["model"] == "nimbus-recommender" and live[0]["value"][1] == "3"
            scraped = wait_until(lambda: (api("/api/v1/query", query='nimbus_http_requests_total{function="health"}')
                                          or {}).get("result"), "the HTTP counters scraped (the scrapes count too)")
            assert {r["metric"]["route"] for r in scraped} >= {"/health/metrics"}

            def burst_until_firing() -> list[dict]:
                for _ in range(5):  # the burst goes on until the rule fires: rate() needs two scrapes of it
                    assert function.get("/health/planted-outage").status_code == 503
                alerts = (api("/api/v1/alerts") or {}).get("alerts", [])
                return [a for a in alerts if a["labels"]["alertname"] == RULE and a["state"] == "firing"]

            firing = wait_until(burst_until_firing, f"{RULE} firing")
            assert firing[0]["labels"]["function"] == "health"
            delivered = wait_until(lambda: [p for p in received if p["status"] == "firing" and any(
                a["labels"]["alertname"] == RULE for a in p["alerts"])], "the alert delivered to the webhook")
    alert = next(a for a in delivered[0]["alerts"] if a["labels"]["alertname"] == RULE)
    assert alert["labels"]["function"] == "health" and alert["labels"]["severity"] == "page"
    assert "health" in alert["annotations"]["summary"]
