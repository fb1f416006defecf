"""The monitoring dashboard's data: one JSON document with everything the page draws.

Each section comes from the module that owns it — live traffic and latency
(``monitoring.traffic``), A/B results (``experiments.service``), recommendation
performance (``monitoring.performance``), drift checks (``monitoring.drift``), alerts (``nimbus.alerts``) — plus the
model versions and when each went live (the registry, the live-pointer log in Redis and
the audit trail), and one entry per model the ``predict`` function served (its traffic, the version
each alias pointed at over time, its canary rollout and guardrails: :func:`served_models_section`).
A section whose store is down comes back ``None`` with the reason under ``errors``, so one
unreachable backend never blanks the whole page.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pymongo.errors

from nimbus import audit
from nimbus.config import Settings
from nimbus.errors import InvalidInput, NimbusError, StoreUnavailable
from nimbus.recommend.bundle import MODEL_NAME
from nimbus.stores.redis.live import LiveModelStore
from nimbus.stores.registry import Registry

log = logging.getLogger("nimbus.dashboard")
SECTIONS = ("alerts", "traffic", "experiments", "performance", "drift", "models", "served_models")


@dataclass(frozen=True)
class DashboardQuery:
    """The windows the page asks for (the defaults are the contract functions' own)."""

    traffic_window_s: int = 900
    traffic_bucket_s: int = 10
    performance_window_s: int = 3600
    performance_bucket_s: int = 60
    drift_limit: int = 50
    experiments_limit: int = 5
    model: str = MODEL_NAME
    alerts_limit: int = 100
    rollouts_limit: int = 20

    def __post_init__(self) -> None:
        for window, bucket in (("traffic_window_s", "traffic_bucket_s"),
                               ("performance_window_s", "performance_bucket_s")):
            if getattr(self, bucket) > getattr(self, window):
                raise InvalidInput(f"{bucket} ({getattr(self, bucket)}) must not exceed {window} "
                                   f"({getattr(self, window)})")


def iso(value: Any) -> str | None:
    """A time (epoch seconds or milliseconds, datetime, ISO text) as ISO-8601 UTC text."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, int | float):
        moment = datetime.fromtimestamp(value / 1000 if value > 1e11 else value, UTC)
    else:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def jsonable(value: Any) -> Any:
    """Plain JSON types (orjson turns datetimes into RFC 3339 text, numpy into numbers, NaN into null)."""
    return orjson.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
                                     | orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z))


# ---- sections ------------------------------------------------------------------------------
def alerts_section(settings: Settings, query: DashboardQuery) -> list[dict[str, Any]]:
    """Every alert, firing first (``nimbus.alerts``)."""
    from nimbus import alerts

    return alerts.list_alerts(settings, limit=query.alerts_limit)


def traffic_section(settings: Settings, query: DashboardQuery) -> dict[str, Any]:
    from nimbus.monitoring import traffic

    return traffic.summary(settings, window_s=query.traffic_window_s, bucket_s=query.traffic_bucket_s)


def experiments_section(settings: Settings, query: DashboardQuery) -> list[dict[str, Any]]:
    """Results of the running experiments first, then the most recently started others."""
    from nimbus.experiments import service

    return service.recent_results(settings, query.experiments_limit)


def performance_section(settings: Settings, query: DashboardQuery) -> dict[str, Any]:
    from nimbus.monitoring import performance

    return performance.summary(settings, window_s=query.performance_window_s, bucket_s=query.performance_bucket_s)


def drift_section(settings: Settings, query: DashboardQuery) -> dict[str, Any]:
    from nimbus.monitoring import drift

    history = drift.history(settings, model=query.model, limit=query.drift_limit)
    checks = sorted(history, key=lambda check: iso(check.get("checked_at")) or "")  # oldest first, for charts
    return {"model": query.model, "psi_threshold": settings.drift_psi_threshold, "checks": checks,
            "alerts": drift.alerts(settings, limit=query.drift_limit)}


def models_section(settings: Settings, query: DashboardQuery) -> dict[str, Any]:
    """Every registered version of ``query.model``, when it was registered and when it went live.

    "Went live" is when a serving alias was first pointed at the version (the live-pointer
    log that every publish writes); the audit trail adds who promoted or rolled back and why.
    """
    registry = Registry.for_settings(settings)
    registry.ping()  # fail fast: the MLflow client itself retries an unreachable server for minutes
    versions = registry.versions(query.model)
    aliases = registry.aliases(query.model) if versions else {}
    store = LiveModelStore.for_settings(settings)
    live_now = store.live(query.model)
    log = sorted(store.live_log(query.model), key=lambda entry: entry["at"])  # oldest first
    went_live: dict[str, list[float]] = {}
    for entry in log:
        went_live.setdefault(str(entry["version"]), []).append(entry["at"])
    rows = []
    for version in versions:  # newest first
        number = version.version
        times = went_live.get(number, [])
        rows.append({
            "version": number,
            "registered_at": iso(version.created_ms),
            "went_live_at": iso(min(times)) if times else None,
            "last_live_at": iso(max(times)) if times else None,
            "aliases": sorted(alias for alias, v in aliases.items() if str(v) == number),
            "live_aliases": sorted(alias for alias, v in live_now.items() if v == number),
            "run_id": version.run_id,
        })
    changes = [
        {"at": iso(record["at"]), "actor": record["actor"], "action": record["action"],
         "alias": record["details"].get("alias"), "from": record["details"].get("from"),
         "to": record["details"].get("to"), "reason": record["details"].get("reason")}
        for record in audit.history(settings, subject=f"model:{query.model}", limit=100)
        if record["action"] in ("promote", "rollback")
    ]
    return {"model": query.model, "live": live_now, "versions": rows,
            "timeline": [{"at": iso(e["at"]), "alias": e["alias"], "version": str(e["version"])} for e in log],
            "changes": changes}


def served_models_section(settings: Settings, query: DashboardQuery) -> dict[str, Any]:
    """One entry per model ``predict`` answered in the traffic window, or whose rollout runs or ended in it.

    Each: the model's traffic (totals and per bucket: requests, errors, p50/p95/p99 ms,
    ``monitoring.traffic.model_summary``), the version each alias pointed at over time (a step series
    per alias from the audited moves, oldest first) and its latest rollout (``serving.rollout.status``:
    state, share, candidate and champion, guardrails, this step's counts per role, its history).
    """
    from nimbus import governance
    from nimbus.monitoring import traffic
    from nimbus.serving import rollout

    summary = traffic.model_summary(settings, window_s=query.traffic_window_s, bucket_s=query.traffic_bucket_s)
    since = summary["generated_at"] - query.traffic_window_s
    names = {name for name, totals in summary["models"].items() if totals["requests"]}
    for doc in rollout.history(settings, limit=query.rollouts_limit):
        ended = doc.get("ended_at")
        if doc["state"] == rollout.RUNNING or (ended and datetime.fromisoformat(iso(ended)).timestamp() >= since):
            names.add(doc["model"])
    series: dict[str, list[dict[str, Any]]] = {}
    for point in summary["series"]:
        series.setdefault(point["model"], []).append({k: v for k, v in point.items() if k != "model"})
    models = []
    for name in sorted(names):
        aliases: dict[str, list[dict[str, Any]]] = {}
        for move in governance.audited_moves(settings, name, timed=True):
            aliases.setdefault(move["alias"], []).append(
                {"at": iso(move["at"]), "version": str(move["to"]), "from": move.get("from"),
                 "reason": move.get("reason")})
        totals = summary["models"].get(name) or {**traffic.stats([]), "rps": 0.0}
        models.append({
            "model": name, **totals,
            "error_rate": totals["errors"] / totals["requests"] if totals["requests"] else None,
            "series": series.get(name, []),
            "aliases": aliases,
            "live": {alias: moves[-1]["version"] for alias, moves in aliases.items()},
            "rollout": rollout.status(settings, name),
        })
    return {"window_s": summary["window_s"], "bucket_s": summary["bucket_s"], "models": models}


SECTION_BUILDERS: dict[str, Callable[[Settings, DashboardQuery], Any]] = {
    "alerts": alerts_section,
    "traffic": traffic_section,
    "experiments": experiments_section,
    "performance": performance_section,
    "drift": drift_section,
    "models": models_section,
    "served_models": served_models_section,
}
STORE_ERRORS = (NimbusError, pymongo.errors.PyMongoError)  # NimbusError: StoreUnavailable among others


def build(settings: Settings, query: DashboardQuery | None = None) -> dict[str, Any]:
    """The dashboard document: every section, each ``None`` with a reason under ``errors`` if its store is down."""
    query = query or DashboardQuery()
    document: dict[str, Any] = {"generated_at": iso(datetime.now(UTC)), "query": asdict(query), "errors": {}}
    for name, builder in SECTION_BUILDERS.items():
        try:
            document[name] = jsonable(builder(settings, query))
        except InvalidInput:
            raise  # the caller's mistake (a window the section refuses): a 400, not a store down
        except STORE_ERRORS as exc:
            document[name] = None  # the page shows which store is down, never its address or error text
            log.warning("dashboard section %s: %s", name, exc)
            document["errors"][name] = (f"{exc.store} is unavailable" if isinstance(exc, StoreUnavailable)
                                        else f"a store is unavailable ({type(exc).__name__})")
    return document
