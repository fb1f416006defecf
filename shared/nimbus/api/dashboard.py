"""The ``dashboard`` function's app: GET /dashboard (the page), GET /dashboard/data (its JSON),
GET /dashboard/alerts (the alerts alone).

The page is static HTML and vanilla JavaScript under ``static/``; it polls /dashboard/data
and draws with Chart.js, which ships inside this package (static/chart.umd.min.js, MIT,
licence beside it) so the page loads nothing from the internet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Query
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from nimbus import alerts
from nimbus.api.auth import AUTH_ERRORS, ReadKey
from nimbus.api.common import SettingsDep, create_app
from nimbus.dashboard import DashboardQuery, build

STATIC = Path(__file__).resolve().parent / "static"

ALERT_EXAMPLE: dict[str, Any] = {
    "key": "error_rate:function:recommend", "kind": "error_rate", "subject": "function:recommend",
    "state": "firing", "severity": "critical",
    "summary": "recommend: 12.0% of 250 requests failed in the last 300 s (threshold 5.0%)",
    "first_seen": "2026-11-26T09:20:00Z", "since": "2026-11-26T09:20:00Z", "last_seen": "2026-11-26T09:30:00Z",
    "resolved_at": None, "count": 3, "notified_at": "2026-11-26T09:20:00Z", "pending": [], "last_error": None}

GUARDRAILS_EXAMPLE: list[dict[str, Any]] = [
    {"name": "error_rate", "status": "pass", "value": 0.002, "limit": 0.01,
     "detail": "candidate 0.40% of 500 vs champion 0.20% of 4500"},
    {"name": "latency_p99", "status": "pass", "value": 4.1, "limit": 9.5, "detail": "p99 4.1 ms vs champion 3.9 ms"},
    {"name": "output_psi", "status": "pending", "value": None, "limit": 0.2, "detail": "120 of 200 samples"},
    {"name": "input_psi", "status": "skipped", "value": None, "limit": 0.2,
     "detail": "version 4 logged no reference/drift.json"},
]
SERVED_MODEL_EXAMPLE: dict[str, Any] = {
    "model": "churn-lr", "requests": 5000, "errors": 2, "degraded": 0, "p50_ms": 0.31, "p95_ms": 0.74,
    "p99_ms": 1.2, "rps": 5.56, "error_rate": 0.0004,
    "series": [{"t": 1795685400, "requests": 56, "errors": 0, "degraded": 0, "p50_ms": 0.3, "p95_ms": 0.7,
                "p99_ms": 1.1}],
    "aliases": {"champion": [{"at": "2026-12-07T19:00:00Z", "version": "3", "from": None, "reason": "first model"}],
                "canary": [{"at": "2026-12-07T20:15:00Z", "version": "4", "from": None,
                            "reason": "canary rollout ro-20261207T201500-a1b2c3 of v4 against champion v3: 10%"}]},
    "live": {"champion": "3", "canary": "4"},
    "rollout": {
        "id": "ro-20261207T201500-a1b2c3", "model": "churn-lr", "candidate": "4", "champion": "3", "mode": "canary",
        "steps": [10.0, 50.0, 100.0], "step": 0, "share": 10.0, "state": "running",
        "started_at": "2026-12-07T20:15:00+00:00", "updated_at": "2026-12-07T20:15:00+00:00",
        "step_started_at": "2026-12-07T20:15:00+00:00", "ended_at": None, "by": "api-key:nimb…",
        "reason": "canary rollout ro-20261207T201500-a1b2c3 of v4 against champion v3: 10%",
        "guardrails": GUARDRAILS_EXAMPLE,
        "counts": {"canary": {"requests": 500, "errors": 2, "p50_ms": 0.3, "p95_ms": 0.8, "p99_ms": 4.1},
                   "champion": {"requests": 4500, "errors": 9, "p50_ms": 0.3, "p95_ms": 0.7, "p99_ms": 3.9}},
        "history": [{"at": "2026-12-07T20:15:00+00:00", "action": "start", "share": 10.0,
                     "reason": "canary rollout ro-20261207T201500-a1b2c3 of v4 against champion v3: 10%"}],
    },
}

EXAMPLE: dict[str, Any] = {
    "generated_at": "2026-11-26T09:30:05.123456Z",
    "query": {"traffic_window_s": 900, "traffic_bucket_s": 10, "performance_window_s": 3600,
              "performance_bucket_s": 60, "drift_limit": 50, "experiments_limit": 5, "model": "nimbus-recommender",
              "alerts_limit": 100, "rollouts_limit": 20},
    "errors": {},
    "alerts": [ALERT_EXAMPLE],
    "traffic": {
        "window_s": 900, "bucket_s": 10,
        "functions": {"recommend": {"requests": 1200, "errors": 0, "degraded": 3, "p50_ms": 2.1, "p95_ms": 5.8,
                                    "p99_ms": 9.7, "rps": 1.33}},
        "series": [{"t": 1795685400, "function": "recommend", "requests": 14, "errors": 0, "degraded": 0,
                    "p50_ms": 2.0, "p95_ms": 5.1, "p99_ms": 8.2}],
    },
    "experiments": [{
        "experiment": {"id": "exp-1", "name": "ranker v4 vs v3", "surface": "home", "status": "running",
                       "variants": [{"name": "control", "model": "nimbus-recommender@3", "weight": 0.5},
                                    {"name": "treatment", "model": "nimbus-recommender@4", "weight": 0.5}],
                       "started_at": "2026-11-26T08:00:00Z", "stopped_at": None},
        "variants": [
            {"name": "control", "exposures": 5012, "users": 498, "clicks": 401, "purchases": 40,
             "metrics": {"ctr": {"rate": 0.08, "ci95": [0.0727, 0.0877], "lift": None, "p_value": None,
                                 "chance_to_beat_control": None},
                         "conversion": {"rate": 0.008, "ci95": [0.0058, 0.0108], "lift": None, "p_value": None,
                                        "chance_to_beat_control": None}}},
            {"name": "treatment", "exposures": 4988, "users": 502, "clicks": 499, "purchases": 52,
             "metrics": {"ctr": {"rate": 0.1, "ci95": [0.0918, 0.1088], "lift": 0.25, "p_value": 0.0006,
                                 "chance_to_beat_control": 0.9997},
                         "conversion": {"rate": 0.0104, "ci95": [0.008, 0.0137], "lift": 0.3, "p_value": 0.21,
                                        "chance_to_beat_control": 0.895}}},
        ],
        "srm": {"chi2": 0.0576, "p_value": 0.81, "flagged": False, "observed": [498, 502], "expected": [500, 500]},
        "verdict": {"status": "winner", "winner": "treatment", "metric": "ctr",
                    "reason": "treatment beats control on ctr (p=0.0006 < 0.05)"},
    }],
    "performance": {
        "window_s": 3600, "bucket_s": 60,
        "by_version": [{"model_version": "4", "variant": "treatment", "exposures": 4988, "clicks": 499,
                        "purchases": 52, "ctr": 0.1, "conversion": 0.0104}],
        "series": [{"t": 1795685400, "model_version": "4", "variant": "treatment", "exposures": 80, "clicks": 9,
                    "ctr": 0.1125}],
        "coverage": 0.62, "diversity": 0.71,
    },
    "drift": {
        "model": "nimbus-recommender", "psi_threshold": 0.1,  # NIMBUS_DRIFT_PSI_THRESHOLD
        "checks": [{"checked_at": "2026-11-26T09:00:00Z", "model": "nimbus-recommender", "model_version": "4",
                    "features": [{"name": "user_ctr", "kind": "numeric", "psi": 0.24, "ks_p": 0.0001,
                                  "chi2_p": None, "drifted": True},
                                 {"name": "category", "kind": "categorical", "psi": 0.01, "ks_p": None,
                                  "chi2_p": 0.62, "drifted": False}],
                    "score": {"psi": 0.03, "ks_p": 0.41, "drifted": False}, "drifted": True, "samples": 2000}],
        "alerts": [{"raised_at": "2026-11-26T09:00:00Z", "model": "nimbus-recommender", "model_version": "4",
                    "features": ["user_ctr"]}],
    },
    "models": {
        "model": "nimbus-recommender", "live": {"champion": "4"},
        "versions": [{"version": "4", "registered_at": "2026-11-26T07:50:00Z", "went_live_at": "2026-11-26T08:00:00Z",
                      "last_live_at": "2026-11-26T08:00:00Z", "aliases": ["champion"], "live_aliases": ["champion"],
                      "run_id": "0f1e2d3c4b5a69788796a5b4c3d2e1f0"}],
        "timeline": [{"at": "2026-11-26T08:00:00Z", "alias": "champion", "version": "4"}],
        "changes": [{"at": "2026-11-26T08:00:00Z", "actor": "api-key:nimb…", "action": "promote", "alias": "champion",
                     "from": "3", "to": "4", "reason": "better AUC on last week's labels"}],
    },
    "served_models": {"window_s": 900, "bucket_s": 10, "models": [SERVED_MODEL_EXAMPLE]},
}


class TrafficPoint(BaseModel):
    t: int = Field(description="Bucket start (epoch seconds).")
    requests: int
    errors: int
    degraded: int
    p50_ms: float | None = Field(description="Null where the bucket saw no request.")
    p95_ms: float | None
    p99_ms: float | None


class AliasMove(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    at: str | None = Field(description="When the alias moved (ISO-8601 UTC, the audit record's time).")
    version: str = Field(description="The version the alias pointed at from then on.")
    from_: str | None = Field(alias="from", description="The version it left (null: a new alias).")
    reason: str | None


class Guardrail(BaseModel):
    name: str = Field(examples=["error_rate"], description="error_rate | latency_p99 | output_psi | input_psi")
    status: Literal["pass", "fail", "pending", "skipped"]
    value: float | None = Field(description="What was measured (null until there is enough to judge).")
    limit: float | None = Field(description="The threshold it is held to.")
    detail: str | None = Field(description="The counts behind it, or why it is pending or skipped.")


class RolloutStep(BaseModel):
    at: str
    action: str = Field(examples=["start"], description="start | step | promote | rollback | cancel")
    share: float | None = Field(description="The candidate's share (%) from then on.")
    reason: str | None


class RolloutView(BaseModel):
    """The model's latest rollout (``nimbus.serving.rollout.status``)."""

    model_config = ConfigDict(extra="allow")

    id: str
    candidate: str
    champion: str
    mode: Literal["canary", "shadow"]
    steps: list[float] = Field(description="The shares (%) it steps through, ending at 100.")
    step: int = Field(description="Index of the current step in steps.")
    share: float = Field(description="The candidate's share (%) now (0 once rolled back or cancelled).")
    state: Literal["starting", "running", "completed", "rolled_back", "cancelled"]
    started_at: str | None
    ended_at: str | None
    reason: str | None
    guardrails: list[Guardrail] = Field(description="The last judgement's guardrails (empty before the first).")
    counts: dict[str, Any] = Field(description="This step's counts per role (canary, champion): requests, errors, "
                                               "p50/p95/p99 ms; or {error} when Redis is down.")
    history: list[RolloutStep]


class ServedModel(BaseModel):
    """One model the predict function served in the window (or whose rollout runs or ended in it)."""

    model: str
    requests: int
    errors: int = Field(description="Requests the model failed on (answered 5xx).")
    degraded: int
    p50_ms: float | None = Field(description="Time to answer (body read to answer serialised), ms.")
    p95_ms: float | None
    p99_ms: float | None
    rps: float
    error_rate: float | None
    series: list[TrafficPoint] = Field(description="The same per time bucket, oldest first.")
    aliases: dict[str, list[AliasMove]] = Field(description="Per alias, every audited move, oldest first: the "
                                                            "version each alias pointed at over time.")
    live: dict[str, str] = Field(description="Alias -> version after the last audited move.")
    rollout: RolloutView | None = Field(description="Its latest rollout; null if it never had one.")


class ServedModels(BaseModel):
    window_s: int
    bucket_s: int
    models: list[ServedModel]


class DashboardData(BaseModel):
    """Everything the dashboard draws. A section is null when its store is down (see ``errors``)."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE]})

    generated_at: str = Field(description="When this document was assembled (ISO-8601 UTC).")
    query: dict[str, Any] = Field(description="The windows and limits in force.")
    errors: dict[str, str] = Field(description="Section -> why it could not be read (a store down).")
    alerts: list[dict[str, Any]] | None = Field(
        default=None, description="Every alert, firing first: kind, subject, state, since, last seen, count, "
                                  "summary (see GET /dashboard/alerts).")
    traffic: dict[str, Any] | None = Field(
        description="Per function: requests, errors, degraded answers, latency p50/p95/p99 (ms), rps; and the "
                    "same per time bucket (series).")
    experiments: list[dict[str, Any]] | None = Field(
        description="A/B results, running first: per variant exposures, clicks, CTR/conversion with 95% "
                    "intervals, lift, p-value, chance to beat control; the SRM check; the verdict.")
    performance: dict[str, Any] | None = Field(
        description="CTR and conversion per model version and variant, over the window and per bucket; "
                    "coverage and diversity of served items.")
    drift: dict[str, Any] | None = Field(
        description="Drift checks, oldest first (PSI, KS and chi-square per feature; score drift), the PSI "
                    "threshold, and the alerts raised.")
    models: dict[str, Any] | None = Field(
        description="Registered versions with when each was registered and went live, live aliases, the "
                    "live-pointer timeline and the audited promotions and rollbacks.")
    served_models: ServedModels | None = Field(
        default=None, description="A section per model the predict function served: traffic and latency over "
                                  "time, the version per alias over time, the rollout's state and guardrails.")


class AlertPublic(BaseModel):
    """One alert: its dedup key (kind:subject), state and when it was seen (``nimbus.alerts``)."""

    model_config = ConfigDict(json_schema_extra={"examples": [ALERT_EXAMPLE]})

    key: str = Field(description="The dedup key: kind:subject.")
    kind: str = Field(description="drift | sample_ratio_mismatch | error_rate | latency_p99 | batch_bad_records | "
                                  "job_failed")
    subject: str = Field(description="What it is about: model:NAME:vN, experiment:ID, function:NAME, batch:RUN, "
                                     "automl:JOB.")
    state: Literal["firing", "resolved"]
    severity: str
    summary: str = Field(description="Thresholds and counts; never data values.")
    first_seen: str | None = Field(description="First time it ever fired (ISO-8601 UTC).")
    since: str | None = Field(description="Start of the current (or last) firing.")
    last_seen: str | None = Field(description="Last evaluation that saw it firing.")
    resolved_at: str | None
    count: int = Field(description="Evaluations that saw it firing.")
    notified_at: str | None = Field(description="Last successful delivery.")
    pending: list[str] = Field(description="Targets a change still has to reach (webhook, sns).")
    last_error: str | None = Field(description="The last failed delivery: target and error type.")


def create_dashboard_app() -> FastAPI:
    app = create_app("Nimbus dashboard",
                     "Monitoring dashboard: live traffic and latency, A/B results, drift, model versions, "
                     "served models and their rollouts.",
                     function="dashboard", docs_url="/dashboard/docs", openapi_url="/dashboard/openapi.json",
                     redoc_url=None)
    router = APIRouter(prefix="/dashboard", tags=["dashboard"])

    @router.get("", response_class=FileResponse, responses={200: {"content": {"text/html": {}}}})
    def page() -> FileResponse:
        """The dashboard page (HTML; its script polls /dashboard/data). ``?refresh=N`` sets the poll
        interval in seconds (0: no polling)."""
        return FileResponse(STATIC / "dashboard.html", media_type="text/html",
                            headers={"Cache-Control": "no-cache"})

    @router.get("/data", response_model=DashboardData, responses=AUTH_ERRORS)
    def data(
        settings: SettingsDep, _: ReadKey,
        traffic_window_s: Annotated[int, Query(ge=10, le=7 * 86400, description="Traffic window.")] = 900,
        traffic_bucket_s: Annotated[int, Query(ge=1, le=3600, description="Traffic bucket.")] = 10,
        performance_window_s: Annotated[int, Query(ge=60, le=30 * 86400)] = 3600,
        performance_bucket_s: Annotated[int, Query(ge=1, le=86400)] = 60,
        drift_limit: Annotated[int, Query(ge=1, le=500, description="Drift checks to return.")] = 50,
        experiments_limit: Annotated[int, Query(ge=0, le=50)] = 5,
    ) -> dict[str, Any]:
        """The dashboard's data (a key with the ``read`` scope): traffic, experiments, performance, drift, models."""
        query = DashboardQuery(traffic_window_s, traffic_bucket_s, performance_window_s, performance_bucket_s,
                               drift_limit, experiments_limit)
        return build(settings, query)

    @router.get("/alerts", response_model=list[AlertPublic], responses=AUTH_ERRORS, summary="Alerts")
    def alert_list(
        settings: SettingsDep, _: ReadKey,
        state: Annotated[Literal["firing", "resolved"] | None, Query(description="Only alerts in this state.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="Alerts to return.")] = 100,
    ) -> list[dict[str, Any]]:
        """The alerts (a key with the ``read`` scope), firing first, then by last seen, newest first."""
        return alerts.list_alerts(settings, state=state, limit=limit)

    app.include_router(router)
    app.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static")
    return app
