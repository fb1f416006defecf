"""The monitoring dashboard in a real headless Chromium, against a running stack with real data.

`nimbus local serve` runs in its own process (as a user starts it) on the test session's stores.
Through its HTTP routes the test creates and starts an A/B experiment (champion vs challenger),
asks for recommendations, sends clicks that favour the treatment, stops it, triples the catalogue's
prices, runs a second one whose users are planted 60/40 on a 50/50 split, and runs the drift check
after each; it also serves a registry model through predict, starts a canary rollout of a second
version and judges it once (the page's served-models section). Then it opens
/dashboard in Chromium and checks that every chart rendered and that the numbers the page draws
(chart datasets and the tables beside them) are the ones the APIs report and the test produced.
The screenshot goes to the test's tmp dir and to .nimbus/artifacts/dashboard.png.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from nimbus import alerts, governance
from nimbus.config import Settings
from nimbus.dashboard import iso
from nimbus.experiments.assignment import assign, bucket_ranges
from nimbus.local.stack import free_port
from nimbus.monitoring import drift
from nimbus.recommend.bundle import MODEL_NAME
from nimbus.recommend.featurize import compute_features
from nimbus.recommend.pipeline import publish_features
from nimbus.serving import rollout
from nimbus.stores.redis.features import FeatureStore
from nimbus.stores.redis.live import LiveModelStore
from tests.classifiers import register_versions

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
KEY = {"X-API-Key": "nimbus-local-key"}
FIFTY_FIFTY = [{"name": "control", "model": "champion", "weight": 0.5},
               {"name": "treatment", "model": "challenger", "weight": 0.5}]
CLICK_P = {"control": 0.10, "treatment": 0.30}  # synthetic users prefer the treatment's answers
SERVED = "e2e-scorer"  # the registry model served through predict and rolled out


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = 60.0, every_s: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(every_s)
    if value := check():
        return value
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def served(live_recommender: dict, tmp_path: Path) -> Iterator[dict]:
    """`nimbus local serve` in its own process on the session's stores, champion and challenger live."""
    from nimbus.recommend.models import promote_version

    settings: Settings = live_recommender["settings"]
    promote_version(settings, live_recommender["versions"][1], "challenger")
    port = free_port()
    # Every answer sampled for drift; a generous Redis timeout, as other work shares these cores.
    env = {**os.environ, "NIMBUS_PROJECT_ROOT": str(ROOT), "NIMBUS_DRIFT_SAMPLE_RATE": "1.0",
           "NIMBUS_REQUEST_TIMEOUT_S": "2.0"}
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "nimbus.cli", "local", "serve", "--port", str(port), "--no-schedules", "--no-watch"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=60)

    def up() -> bool:
        assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        try:
            return client.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(up, "nimbus local serve to answer /health", timeout_s=120)
        yield {**live_recommender, "url": url, "client": client, "settings": settings}
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


class Traffic:
    """What the test sent through the gateway, to compare with what the dashboard reports."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.requests: Counter[str] = Counter()  # function -> requests sent
        self.answers: list[dict] = []

    def recommend(self, user: str) -> dict:
        answer = self.client.get(f"/recommendations/{user}", params={"k": 5})
        self.requests["recommend"] += 1
        assert answer.status_code == 200, answer.text
        body = answer.json()
        self.answers.append(body)
        return body

    def events(self, events: list[dict]) -> None:
        for i in range(0, len(events), 500):
            self.requests["events"] += 1
            assert self.client.post("/events", json={"events": events[i:i + 500]}, headers=KEY).status_code == 200

    def admin(self, method: str, path: str, **kwargs: Any) -> dict:
        answer = self.client.request(method, path, headers=KEY, **kwargs)
        assert answer.status_code in (200, 201), answer.text
        return answer.json()


def run_experiment(traffic: Traffic, name: str, users: list[str], clicks: bool) -> tuple[dict, Counter]:
    """Create and start a 50/50 experiment, serve each user one to three times and click on some answers."""
    exp = traffic.admin("POST", "/experiments", json={"name": name, "variants": FIFTY_FIFTY})
    traffic.admin("POST", f"/experiments/{exp['id']}/start")
    # the serving process hears of the start on pub/sub (or its poll): wait until it assigns by it
    wait_for(lambda: traffic.recommend(users[0])["experiment"] == exp["id"], f"the recommender to run {name}")
    rng = random.Random(name)
    expected: Counter = Counter()
    clicks_out = []
    for user in users:
        for _ in range(rng.choice((1, 2, 3))):
            body = traffic.recommend(user)
            assert body["experiment"] == exp["id"], body
            if clicks and rng.random() < CLICK_P[body["variant"]]:
                clicks_out.append({"event_id": f"c-{body['request_id']}", "user_id": user, "type": "click",
                                   "item_id": body["items"][0]["item_id"], "request_id": body["request_id"]})
                expected[(body["variant"], "clicks")] += 1
    mine = [a for a in traffic.answers if a["experiment"] == exp["id"]]
    for answer in mine:
        expected[(answer["variant"], "exposures")] += 1
    # exposures reach Redis from the serving process's buffer within exposure_flush_s; clicks join them
    results = lambda: traffic.admin("GET", f"/experiments/{exp['id']}/results")  # noqa: E731
    wait_for(lambda: all(v["exposures"] == expected[(v["name"], "exposures")] for v in results()["variants"]),
             f"{name}'s exposures to be counted")
    traffic.events(clicks_out)
    return exp, expected


def serve_and_roll_out(traffic: Traffic, settings: Settings) -> dict:
    """Two versions of a small classifier; v1 champion, served through predict; a canary rollout of v2 at
    50%, more requests, one judgement (it holds: too few requests to step, so guardrails stay pending)."""
    versions = register_versions(settings, SERVED, "nimbus-e2e-dashboard", ("x0", "x1"), (1.0, 0.2), seed=11)
    governance.move_alias(settings, SERVED, "champion", versions[0], reason="first version", who="e2e")

    def predict(i: int) -> dict:
        answer = traffic.client.post(f"/predict/{SERVED}", json={"x0": (i % 9) / 4 - 1, "x1": (i % 4) / 2 - 1},
                                     headers={**KEY, "X-Routing-Key": f"user-{i}"})
        traffic.requests["predict"] += 1
        assert answer.status_code == 200, answer.text
        return answer.json()

    answers = [predict(i) for i in range(30)]
    started = rollout.start(settings, SERVED, versions[1], "50%", reason="e2e canary", who="e2e")
    wait_for(lambda: predict(len(answers))["rollout"] is not None, "predict to follow the rollout")
    routed = [a for a in (predict(i) for i in range(100, 160)) if a["rollout"] is not None]
    count = lambda: rollout.status(settings, SERVED)["counts"]  # noqa: E731
    wait_for(lambda: sum(count().get(role, {}).get("requests", 0) for role in ("canary", "champion")) >= len(routed),
             "the rollout's counts to reach Redis")
    [decision] = rollout.judge(settings, SERVED, who="e2e")
    assert decision["action"] == "hold", decision
    return {"versions": versions, "rollout": started["id"], "routed": routed}


def settle_samples(settings: Settings, expected: int) -> None:
    """Wait until the serving process has written every sampled feature vector to Redis."""
    store = LiveModelStore.for_settings(settings)
    wait_for(lambda: len(store.samples(MODEL_NAME, 100_000)) >= expected, "the drift samples")


@pytest.fixture
def monitored(served: dict) -> dict:
    """Two experiments and two drift checks of real traffic; returns what the test knows happened."""
    settings: Settings = served["settings"]
    traffic = Traffic(served["client"])
    users = [str(u) for u in served["features"].user_ids]

    first, expected = run_experiment(traffic, "ranker-v2-vs-v1", users[:500], clicks=True)
    settle_samples(settings, sum(a["strategy"] == "personalized" for a in traffic.answers))
    first_checks = drift.run_check(settings, MODEL_NAME)
    traffic.admin("POST", f"/experiments/{first['id']}/stop")

    # Prices triple overnight: the serving process swaps the new features in, and the next check sees the shift.
    dataset = served["dataset"]
    catalogue = dataset.catalogue.assign(price=dataset.catalogue["price"] * 3)
    shifted = compute_features(dataclasses.replace(dataset, catalogue=catalogue), version="prices-x3")
    publish_features(FeatureStore.for_settings(settings), shifted)
    wait_for(lambda: traffic.recommend(users[0])["feature_version"] == "prices-x3", "the new features to be live")

    # The second experiment's users are picked so 60% of them hash to control: a planted mismatch.
    probe = traffic.admin("POST", "/experiments", json={"name": "planted-srm", "variants": FIFTY_FIFTY})
    ranges = bucket_ranges(2, 1.0, [0.5, 0.5])
    by_arm = {0: [], 1: []}
    for user in users:
        by_arm[assign(probe["seed"], user, ranges)].append(user)
    planted = by_arm[0][:180] + by_arm[1][:120]
    random.Random(7).shuffle(planted)
    traffic.admin("POST", f"/experiments/{probe['id']}/start")
    wait_for(lambda: traffic.recommend(planted[0])["experiment"] == probe["id"], "the recommender to run planted-srm")
    for user in planted:
        for _ in range(3):
            traffic.recommend(user)
    planted_answers = [a for a in traffic.answers if a["experiment"] == probe["id"]]
    second_expected = Counter(a["variant"] for a in planted_answers)
    wait_for(lambda: [v["exposures"] for v in traffic.admin("GET", f"/experiments/{probe['id']}/results")["variants"]]
             == [second_expected["control"], second_expected["treatment"]], "planted-srm's exposures")
    settle_samples(settings, sum(a["strategy"] == "personalized" for a in traffic.answers))
    second_checks = drift.run_check(settings, MODEL_NAME)
    alerts.evaluate(settings, drift_checks=second_checks)  # as the monitor does: planted-srm's mismatch fires
    rolled = serve_and_roll_out(traffic, settings)

    client = served["client"]
    counted = lambda: client.get("/dashboard/data", headers=KEY).json()["traffic"]["functions"]  # noqa: E731
    wait_for(lambda: all(counted().get(f, {}).get("requests") == n for f, n in traffic.requests.items()),
             "the traffic rollup to count every request")
    served_models = lambda: client.get("/dashboard/data", headers=KEY).json()["served_models"]["models"]  # noqa: E731
    wait_for(lambda: [m["requests"] for m in served_models() if m["model"] == SERVED] == [traffic.requests["predict"]],
             "the served-model rollup to count every predict request")
    return {**served, "traffic": traffic, "first": first, "expected": expected, "second": probe,
            "second_expected": second_expected, "checks": first_checks + second_checks, "rolled": rolled}


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])


# What the page drew, read back from the DOM and the Chart instances.
READ_PAGE = """() => {
  const cells = (row) => Object.fromEntries([...row.querySelectorAll('td[data-field]')]
      .map((td) => [td.dataset.field, td.dataset.value]));
  const chart = (canvas) => { const c = Chart.getChart(canvas);
      return c && c.data.datasets.map((d) => ({label: d.label, data: d.data, feature: d.feature,
                                               model_version: d.model_version, alias: d.alias, threshold: !!d.threshold})); };
  const inked = (canvas) => { const ctx = canvas.getContext('2d');
      const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data; let n = 0;
      for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++; return n; };
  const canvases = [...document.querySelectorAll('canvas')];
  return {
    charts: canvases.map((c) => ({id: c.id || c.closest('[data-experiment-id]').dataset.experimentId,
                                  has_chart: !!Chart.getChart(c), inked: inked(c), width: c.width})),
    traffic: Object.fromEntries([...document.querySelectorAll('#table-traffic tr[data-function]')]
                                .map((r) => [r.dataset.function, cells(r)])),
    traffic_chart: chart(document.getElementById('chart-traffic')),
    latency_chart: chart(document.getElementById('chart-latency')),
    experiments: [...document.querySelectorAll('.experiment')].map((card) => ({
      id: card.dataset.experimentId, status: card.dataset.status, verdict: card.dataset.verdictStatus,
      winner: card.dataset.verdictWinner, srm_flagged: card.dataset.srmFlagged, srm_p: card.dataset.srmP,
      rows: Object.fromEntries([...card.querySelectorAll('tr[data-variant]')].map((r) => [r.dataset.variant, cells(r)])),
      chart: chart(card.querySelector('canvas'))})),
    srm_banners: [...document.querySelectorAll('.banner.srm')].map((b) => ({id: b.dataset.experimentId, text: b.textContent})),
    performance: [...document.querySelectorAll('#table-performance tr[data-key]')].map(cells),
    coverage: document.getElementById('coverage').dataset.value,
    diversity: document.getElementById('diversity').dataset.value,
    drift_chart: chart(document.getElementById('chart-drift')),
    drift_rows: [...document.querySelectorAll('#table-drift tr[data-feature]')].map((r) => ({
      feature: r.dataset.feature, version: r.dataset.modelVersion, ...cells(r)})),
    alerts: document.querySelectorAll('#drift-alerts li[data-at]').length,
    alert_rows: Object.fromEntries([...document.querySelectorAll('#table-alerts tr[data-key]')]
                                   .map((r) => [r.dataset.key, cells(r)])),
    models: Object.fromEntries([...document.querySelectorAll('#table-models tr[data-version]')]
                               .map((r) => [r.dataset.version, cells(r)])),
    models_chart: chart(document.getElementById('chart-models')),
    served: [...document.querySelectorAll('.served')].map((card) => ({
      model: card.dataset.model, rollout_state: card.dataset.rolloutState,
      totals: cells(card.querySelector('.served-totals tr[data-model]')),
      traffic_chart: chart(card.querySelector('[data-chart="served-traffic"] canvas')),
      aliases_chart: chart(card.querySelector('[data-chart="served-aliases"] canvas')),
      rollout_hidden: card.querySelector('.rollout').hidden,
      guardrails: [...card.querySelectorAll('.guardrails tr[data-guardrail]')].map((r) => ({
        name: r.dataset.guardrail, status: r.dataset.status, cls: r.className,
        color: getComputedStyle(r.querySelector('td[data-field="status"]')).color, ...cells(r)})),
      roles: Object.fromEntries([...card.querySelectorAll('.roles tr[data-role]')].map((r) => [r.dataset.role, cells(r)])),
      history: [...card.querySelectorAll('.rollout-history li')].map((li) => li.dataset.action)})),
    errors: [...document.querySelectorAll('section > .error')].filter((e) => !e.hidden).map((e) => e.textContent),
    generated_at: document.body.dataset.generatedAt,
  };
}"""


def num(text: str) -> float | None:
    return None if text in ("", None) else float(text)


@pytest.mark.timeout(900)  # a whole stack, two experiments and a browser on a shared machine
def test_the_dashboard_draws_what_the_stack_reports(monitored: dict, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/bootstrap.sh installs the Debian packages chromium and chromium-driver")
    client: httpx.Client = monitored["client"]
    traffic: Traffic = monitored["traffic"]
    first, second = monitored["first"]["id"], monitored["second"]["id"]
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("requestfailed", lambda req: errors.append(f"{req.url}: {req.failure}"))
        page.goto(f"{monitored['url']}/dashboard?refresh=0")
        # the page loads without a key and asks for one before it reads any data
        page.wait_for_function("() => document.body.dataset.state === 'locked'", timeout=60_000)
        page.fill("#api-key", "wrong-key")
        page.click("#key-form button")
        page.wait_for_function("() => document.getElementById('key-error').textContent.includes('not valid')",
                               timeout=60_000)
        page.fill("#api-key", KEY["X-API-Key"])
        page.click("#key-form button")
        page.wait_for_function("() => window.nimbusDashboard && window.nimbusDashboard.renders > 0", timeout=60_000)
        data = page.evaluate("() => window.nimbusDashboard.data")  # the document the page drew
        shown = page.evaluate(READ_PAGE)
        # the latency and drift charts show one function / model version at a time: read each
        latency, drift_lines = {}, {}
        for fn in data["traffic"]["functions"]:
            page.select_option("#latency-function", fn)
            latency[fn] = page.evaluate(READ_PAGE)["latency_chart"]
        for version in sorted({c["model_version"] for c in data["drift"]["checks"]}):
            page.select_option("#drift-version", version)
            drift_lines[version] = page.evaluate(READ_PAGE)["drift_chart"]
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        # and the page keeps polling: a refreshing page renders again with newer data
        # a fresh tab given the key in the URL fragment (never sent to the server) keeps polling
        page = browser.new_page()
        page.goto(f"{monitored['url']}/dashboard?refresh=1#key={KEY['X-API-Key']}")
        page.wait_for_function("() => window.nimbusDashboard && window.nimbusDashboard.renders >= 2", timeout=60_000)
        assert "key=" not in page.url  # and it left the address bar
        browser.close()
    artifact = ROOT / ".nimbus" / "artifacts" / "dashboard.png"
    artifact.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, artifact)
    print(f"\ndashboard screenshot: {shot}\n                      {artifact}")

    assert not errors and not shown["errors"] and data["errors"] == {}
    assert shown["generated_at"] == data["generated_at"]
    # every chart rendered: a Chart instance per canvas, with ink on it
    assert {c["id"] for c in shown["charts"]} == {"chart-traffic", "chart-latency", "chart-ctr-time", "chart-drift",
                                                  "chart-models", first, second, f"chart-served-traffic-{SERVED}",
                                                  f"chart-served-aliases-{SERVED}"}
    assert all(c["has_chart"] and c["width"] > 0 and c["inked"] > 500 for c in shown["charts"]), shown["charts"]

    # ---- the page's document is what the APIs report, and what the test produced ------------------
    assert client.get("/dashboard/data").status_code == 401  # the data is behind the read key
    api = client.get("/dashboard/data", headers=KEY).json()
    for section in ("experiments", "performance", "drift", "models"):  # nothing changed these since
        assert api[section] == data[section], section
    for fn, sent in traffic.requests.items():
        assert data["traffic"]["functions"][fn]["requests"] == sent == api["traffic"]["functions"][fn]["requests"]
        assert data["traffic"]["functions"][fn]["errors"] == 0
    results = {r["experiment"]["id"]: r for r in data["experiments"]}
    assert list(results) == [second, first]  # running first
    for exp_id in (first, second):
        assert results[exp_id] == traffic.admin("GET", f"/experiments/{exp_id}/results")
    variants = {v["name"]: v for v in results[first]["variants"]}
    expected = monitored["expected"]
    for name in ("control", "treatment"):
        assert variants[name]["exposures"] == expected[(name, "exposures")]
        assert variants[name]["clicks"] == expected[(name, "clicks")]
    assert results[first]["verdict"]["status"] == "winner" and results[first]["verdict"]["winner"] == "treatment"
    assert not results[first]["srm"]["flagged"]
    assert results[second]["srm"]["flagged"] and results[second]["srm"]["observed"] == [180, 120]
    assert [v["exposures"] for v in results[second]["variants"]] == [
        monitored["second_expected"]["control"], monitored["second_expected"]["treatment"]]
    performance = traffic.admin("GET", "/performance/recommendations")
    assert data["performance"]["by_version"] == performance["by_version"]
    checks = monitored["checks"]
    assert [c["id"] for c in data["drift"]["checks"]] == [c["id"] for c in checks]  # oldest first
    assert data["drift"]["checks"] == [{**c} for c in reversed(drift.history(monitored["settings"], MODEL_NAME))]
    assert data["drift"]["psi_threshold"] == monitored["settings"].drift_psi_threshold
    # the alerts section: every alert with its state, since and count; planted-srm's mismatch is firing
    assert api["alerts"] == data["alerts"] == alerts.list_alerts(monitored["settings"])
    assert {k: (r["state"], r["since"], int(r["count"])) for k, r in shown["alert_rows"].items()} == {
        a["key"]: (a["state"], a["since"], a["count"]) for a in data["alerts"]}
    assert shown["alert_rows"][f"sample_ratio_mismatch:experiment:{second}"]["state"] == "firing"
    assert data["models"]["live"] == {"champion": monitored["versions"][0], "challenger": monitored["versions"][1]}

    # ---- the page draws the document's numbers -----------------------------------------------------
    for fn, row in data["traffic"]["functions"].items():
        cells = shown["traffic"][fn]
        assert int(cells["requests"]) == row["requests"] and int(cells["errors"]) == row["errors"]
        for field in ("p50_ms", "p95_ms", "p99_ms", "rps"):
            assert num(cells[field]) == pytest.approx(row[field]), (fn, field)
    bucket = data["traffic"]["bucket_s"]
    for dataset in shown["traffic_chart"]:
        series = [p for p in data["traffic"]["series"] if p["function"] == dataset["label"]]
        assert [p["x"] for p in dataset["data"]] == [p["t"] * 1000 for p in series]
        assert [p["y"] * bucket for p in dataset["data"]] == pytest.approx([p["requests"] for p in series])
    assert sum(p["y"] for d in shown["traffic_chart"] if d["label"] == "recommend" for p in d["data"]) * bucket \
        == pytest.approx(traffic.requests["recommend"])
    busiest = max(data["traffic"]["functions"].items(), key=lambda kv: kv[1]["requests"])[0]
    assert busiest == "recommend" and shown["latency_chart"] == latency["recommend"]  # the default choice
    for fn, datasets in latency.items():
        drawn = {d["label"]: {p["x"]: p["y"] for p in d["data"]} for d in datasets}
        assert set(drawn) == {"p50", "p95", "p99"}
        for p in (p for p in data["traffic"]["series"] if p["function"] == fn):
            for field in ("p50_ms", "p95_ms", "p99_ms"):
                value = drawn[field[:-3]].get(p["t"] * 1000)
                assert value == (None if p[field] is None else pytest.approx(p[field])), (p, field)

    cards = {c["id"]: c for c in shown["experiments"]}
    assert [c["id"] for c in shown["experiments"]] == [second, first]
    for exp_id, result in results.items():
        card = cards[exp_id]
        assert (card["verdict"], card["winner"]) == (result["verdict"]["status"], result["verdict"]["winner"] or "")
        assert card["srm_flagged"] == str(result["srm"]["flagged"]).lower()
        assert num(card["srm_p"]) == pytest.approx(result["srm"]["p_value"])
        rates = {d["label"]: d["data"] for d in card["chart"]}
        assert rates["CTR"] == pytest.approx([v["metrics"]["ctr"]["rate"] for v in result["variants"]])
        assert rates["95% interval"] == [pytest.approx(v["metrics"]["ctr"]["ci95"]) for v in result["variants"]]
        for v in result["variants"]:
            row = card["rows"][v["name"]]
            for field in ("exposures", "users", "clicks", "purchases"):
                assert int(row[field]) == v[field], (exp_id, v["name"], field)
            ctr = v["metrics"]["ctr"]
            assert num(row["ctr.rate"]) == pytest.approx(ctr["rate"])
            assert [float(x) for x in row["ctr.ci95"].split(",")] == pytest.approx(ctr["ci95"])
            assert num(row["ctr.p_value"]) == pytest.approx(ctr["p_value"])
    assert [b["id"] for b in shown["srm_banners"]] == [second]
    assert "Sample ratio mismatch" in shown["srm_banners"][0]["text"] and "[180,120]" in shown["srm_banners"][0]["text"]

    rows = {(r["model_version"], r["variant"]): r for r in shown["performance"]}
    assert len(rows) == len(data["performance"]["by_version"])
    for r in data["performance"]["by_version"]:
        cells = rows[(r["model_version"], r["variant"])]
        assert (int(cells["exposures"]), int(cells["clicks"])) == (r["exposures"], r["clicks"])
        assert num(cells["ctr"]) == pytest.approx(r["ctr"])
    assert num(shown["coverage"]) == pytest.approx(data["performance"]["coverage"])
    assert num(shown["diversity"]) == pytest.approx(data["performance"]["diversity"])

    newest = data["drift"]["checks"][-1]["model_version"]
    assert shown["drift_chart"] == drift_lines[newest]  # the default choice
    for version, datasets in drift_lines.items():
        lines = {d["feature"]: {p["x"]: p["y"] for p in d["data"]} for d in datasets if not d["threshold"]}
        [threshold] = [d for d in datasets if d["threshold"]]
        assert {p["y"] for p in threshold["data"]} == {data["drift"]["psi_threshold"]}
        mine = [c for c in data["drift"]["checks"] if c["model_version"] == version]
        assert len(mine) == 2 and all(c["status"] == "ok" for c in mine)
        assert set(lines) == {f["name"] for f in mine[0]["features"]} | {"__score__"}
        for check in mine:
            for f in check["features"]:
                assert lines[f["name"]][_ms(check["checked_at"])] == pytest.approx(f["psi"]), (check["id"], f["name"])
            assert lines["__score__"][_ms(check["checked_at"])] == pytest.approx(check["score"]["psi"])
    assert len({f["name"] for c in checks for f in c["features"]}) == 8  # the ranker's 7 numeric features + category
    latest = {c["model_version"]: c for c in data["drift"]["checks"]}  # oldest first: the last one wins
    table = {(r["feature"], r["version"]): r for r in shown["drift_rows"]}
    for version, check in latest.items():
        for f in check["features"]:
            row = table[(f["name"], version)]
            assert num(row["psi"]) == pytest.approx(f["psi"]) and row["drifted"] == str(f["drifted"]).lower()
    assert shown["alerts"] == len(data["drift"]["alerts"]) == len(drift.alerts(monitored["settings"])) >= 1
    flagged = {(r["feature"], r["version"]) for r in shown["drift_rows"] if r["drifted"] == "true"}
    assert flagged == {(f["name"], v) for v, c in latest.items() for f in c["features"] if f["drifted"]}
    assert ("item_price", monitored["versions"][1]) in flagged  # the planted shift, as the check reports it

    for v in data["models"]["versions"]:
        cells = shown["models"][v["version"]]
        assert cells["went_live_at"] == (v["went_live_at"] or "") and cells["live_aliases"] == ",".join(v["live_aliases"])
    steps = {d["alias"]: d["data"] for d in shown["models_chart"]}
    assert steps["champion"][-1]["y"] == int(monitored["versions"][0])
    assert steps["challenger"][-1]["y"] == int(monitored["versions"][1])

    # ---- the served model's section: its traffic, its versions per alias, the rollout and guardrails ----
    rolled = monitored["rolled"]
    v1, v2 = rolled["versions"]
    [model] = [m for m in data["served_models"]["models"] if m["model"] == SERVED]
    [card] = [c for c in shown["served"] if c["model"] == SERVED]
    assert model["requests"] == traffic.requests["predict"] and model["errors"] == 0
    assert int(card["totals"]["requests"]) == model["requests"]
    assert num(card["totals"]["p99_ms"]) == pytest.approx(model["p99_ms"])
    drawn = {d["label"]: d["data"] for d in card["traffic_chart"]}
    assert sum(p["y"] for p in drawn["req/s"]) * data["served_models"]["bucket_s"] == pytest.approx(model["requests"])
    assert [p["y"] for p in drawn["p99 ms"]] == pytest.approx([p["p99_ms"] for p in model["series"] if p["p99_ms"]])
    versions_drawn = {d["alias"]: [p["y"] for p in d["data"]] for d in card["aliases_chart"]}
    assert versions_drawn["champion"][-1] == int(v1) and versions_drawn["canary"][-1] == int(v2)
    shown_rollout = model["rollout"]
    assert (shown_rollout["id"], shown_rollout["state"], shown_rollout["share"]) == (rolled["rollout"], "running", 50)
    assert card["rollout_state"] == "running" and not card["rollout_hidden"] and card["history"] == ["start"]
    assert [(g["name"], g["status"]) for g in card["guardrails"]] == [
        (g["name"], g["status"]) for g in shown_rollout["guardrails"]]
    assert {g["name"] for g in card["guardrails"]} >= {"error_rate", "latency_p99"}
    assert all(g["cls"] == f"guard-{g['status']}" for g in card["guardrails"])
    styled = {g["status"]: g["color"] for g in card["guardrails"]}
    assert "pending" in styled and len(set(styled.values())) == len(styled)  # each status its own colour
    by_role = Counter(a["rollout"]["role"] for a in rolled["routed"])
    assert {role: int(c["requests"]) for role, c in card["roles"].items()} == {
        role: shown_rollout["counts"][role]["requests"] for role in ("canary", "champion")}
    assert sum(int(c["requests"]) for c in card["roles"].values()) >= sum(by_role.values())


def _ms(text: str) -> int:
    """Epoch ms of an ISO time as the page reads it (no zone: UTC), to the millisecond like Date.parse."""
    moment = datetime.fromisoformat(iso(text).replace("Z", "+00:00"))
    return int(moment.replace(microsecond=0).timestamp()) * 1000 + moment.microsecond // 1000
