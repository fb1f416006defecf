"""Alerts: one model for everything that should reach someone, with deduplication and resolve.

**Kinds** (:data:`KINDS`): ``drift`` (a live model version's features or score drifted),
``sample_ratio_mismatch`` (a running experiment's users per variant do not match its
weights), ``error_rate`` and ``latency_p99`` (an HTTP function over
``alert_window_s``, from the traffic rollup), ``batch_bad_records`` (a batch run's
quarantined share over ``alert_bad_record_share``) and ``job_failed`` (a batch run or
an AutoML job failed, within ``alert_job_lookback_s``).

**Sources** (:data:`SOURCES`) each look at what Nimbus already keeps and return one
:class:`Signal` per subject they could judge: ``firing`` True, False (the condition is
clear) or None (no verdict: too few samples or requests, a run still running). A source
is *exhaustive*: an alert of its kind that is firing but whose subject the source no
longer reports (a version no longer live, a stopped experiment, a job past the lookback)
is resolved. A source whose store is down is skipped — its alerts stay as they are.

**The record** (MongoDB ``alerts``, one document per dedup key ``kind:subject``):
state ``firing`` | ``resolved``, ``first_seen`` (ever), ``since`` (start of the current
firing), ``last_seen``, ``count`` (evaluations seen firing), severity and a summary
that names thresholds and counts, never data values or secrets. Firing again updates the
document; a change to deliver is kept per target under ``pending`` until a delivery to
that target succeeds, so a target that is down gets it at the next evaluation, and a
target that got it is not sent it twice. A firing alert is delivered when it starts and
again every ``alert_renotify_s`` while it keeps firing; a resolve is delivered once.

Contract (the dashboard and ``nimbus alerts list`` read it)::

    list_alerts(settings, state=None, limit=100) -> [  # firing first, then newest last_seen
        {"key", "kind", "subject", "state", "severity", "summary", "first_seen", "since",
         "last_seen", "resolved_at", "count", "notified_at", "pending" ([target names]),
         "last_error"}]
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pymongo.errors

from nimbus.config import Settings
from nimbus.errors import NimbusError

log = logging.getLogger("nimbus.alerts")
STORE_ERRORS = (NimbusError, pymongo.errors.PyMongoError)  # NimbusError: StoreUnavailable among others

KINDS = ("drift", "sample_ratio_mismatch", "error_rate", "latency_p99", "batch_bad_records", "job_failed")
Kind = Literal["drift", "sample_ratio_mismatch", "error_rate", "latency_p99", "batch_bad_records", "job_failed"]
Severity = Literal["warning", "critical"]


@dataclass(frozen=True)
class Signal:
    """One source's verdict on one subject (``firing`` None: no verdict, the alert stays as it is)."""

    kind: Kind
    subject: str
    firing: bool | None
    summary: str = ""
    severity: Severity = "warning"

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.subject}"


# ---- sources -----------------------------------------------------------------------------------
def drift_signals(checks: Sequence[Mapping[str, Any]]) -> list[Signal]:
    """From ``drift.run_check``'s documents (one per live version): a verdict where the check was ``ok``."""
    signals = []
    for check in checks:
        subject = f"model:{check['model']}:v{check['model_version']}"
        if check.get("status") != "ok":
            signals.append(Signal("drift", subject, None))
            continue
        names = [f["name"] for f in check.get("features", []) if f.get("drifted")]
        what = ", ".join(names + (["the score"] if check.get("score", {}).get("drifted") else []))
        t = check.get("thresholds", {})
        signals.append(Signal("drift", subject, bool(check.get("drifted")),
                              f"{check['model']} v{check['model_version']}: drift in {what} ({check['samples']} "
                              f"samples; PSI > {t.get('psi')} and p < {t.get('p_value')})" if check.get("drifted")
                              else f"{check['model']} v{check['model_version']}: no drift"))
    return signals


def srm_signals(settings: Settings) -> list[Signal]:
    """Running experiments: the sample-ratio check of their live counts."""
    from nimbus.experiments import service

    signals = []
    for result in service.recent_results(settings, limit=1000):
        experiment = result["experiment"]
        if experiment["status"] != "running":
            continue
        srm = result["srm"]
        signals.append(Signal(
            "sample_ratio_mismatch", f"experiment:{experiment['id']}", bool(srm["flagged"]),
            f"experiment {experiment['name']}: users per variant {srm['observed']} vs expected {srm['expected']} "
            f"(chi-square p = {srm['p_value']:.2g})", "critical"))
    return signals


def traffic_signals(settings: Settings) -> list[Signal]:
    """Error rate and p99 latency per HTTP function over ``alert_window_s`` (the cross-process rollup)."""
    from nimbus.monitoring import traffic

    window = settings.alert_window_s // settings.traffic_bucket_s * settings.traffic_bucket_s
    report = traffic.summary(settings, window_s=max(window, settings.traffic_bucket_s),
                             bucket_s=settings.traffic_bucket_s)
    signals = []
    for name, f in report["functions"].items():
        subject, enough = f"function:{name}", f["requests"] >= settings.alert_min_requests
        rate = f["errors"] / f["requests"] if f["requests"] else 0.0
        signals.append(Signal(
            "error_rate", subject, rate > settings.alert_error_rate if enough else None,
            f"{name}: {rate:.1%} of {f['requests']} requests failed in the last {report['window_s']} s "
            f"(threshold {settings.alert_error_rate:.1%})", "critical"))
        p99 = f["p99_ms"]
        signals.append(Signal(
            "latency_p99", subject, p99 > settings.alert_latency_p99_ms if enough and p99 is not None else None,
            f"{name}: p99 latency {p99 or 0:.0f} ms over {f['requests']} requests in the last "
            f"{report['window_s']} s (threshold {settings.alert_latency_p99_ms:.0f} ms)"))
    return signals


def _recent(settings: Settings, collection: str, started: str, now: datetime) -> list[dict[str, Any]]:
    """Job records of ``collection`` whose ``started`` time is within ``alert_job_lookback_s``."""
    from nimbus.stores.documents import DocumentStore

    since = now - timedelta(seconds=settings.alert_job_lookback_s)
    return list(DocumentStore.for_settings(settings).collection(collection).find(
        {started: {"$gte": since}}, {"status": 1, "counts": 1}))


def _failed(subject: str, what: str, status: str | None, ended: tuple[str, ...]) -> Signal:
    return Signal("job_failed", subject, status == "failed" if status in ended else None, f"{what}: {status}",
                  "critical")


def batch_signals(settings: Settings, now: datetime) -> list[Signal]:
    """Batch runs started within ``alert_job_lookback_s``: failed, and quarantined share (of an ended run)."""
    from nimbus.stores.documents import Collections

    signals = []
    for run in _recent(settings, Collections.BATCH_RUNS, "started_at", now):
        subject, status, ended = f"batch:{run['_id']}", run.get("status"), ("succeeded", "failed", "skipped")
        signals.append(_failed(subject, f"batch run {run['_id']}", status, ended))
        counts = run.get("counts") or {}
        records, bad = counts.get("records", 0), counts.get("quarantined", 0)
        share = bad / records if records else 0.0
        signals.append(Signal(
            "batch_bad_records", subject,
            share > settings.alert_bad_record_share if status in ended and records else None,
            f"batch run {run['_id']}: {bad} of {records} records quarantined ({share:.1%}; threshold "
            f"{settings.alert_bad_record_share:.1%})"))
    return signals


def automl_signals(settings: Settings, now: datetime) -> list[Signal]:
    """AutoML jobs created within ``alert_job_lookback_s`` that ended: failed or not."""
    from nimbus.stores.documents import Collections

    return [_failed(f"automl:{job['_id']}", f"AutoML job {job['_id']}", job.get("status"),
                    ("succeeded", "failed", "cancelled"))
            for job in _recent(settings, Collections.AUTOML_JOBS, "created_at", now)]


# kind(s) a source judges -> the source; evaluate() runs each, skipping (and logging) one whose store is down
SOURCES: dict[str, tuple[tuple[str, ...], Callable[[Settings, datetime], list[Signal]]]] = {
    "experiments": (("sample_ratio_mismatch",), lambda s, now: srm_signals(s)),
    "traffic": (("error_rate", "latency_p99"), lambda s, now: traffic_signals(s)),
    "batch": (("job_failed:batch", "batch_bad_records"), batch_signals),
    "automl": (("job_failed:automl",), automl_signals),
}


# ---- the record --------------------------------------------------------------------------------
def _collection(settings: Settings) -> Any:
    from nimbus.stores.documents import Collections, DocumentStore

    return DocumentStore.for_settings(settings).collection(Collections.ALERTS)


def targets(settings: Settings) -> list[str]:
    """The delivery targets configured (``webhook``, ``sns``)."""
    return [name for name, on in (("webhook", settings.alert_webhook_url), ("sns", settings.alert_sns_topic_arn)) if on]


def _scope(scope: str, key: str) -> bool:
    """``scope`` is a kind (``error_rate``) or a kind and a subject prefix (``job_failed:batch``)."""
    return key.startswith(scope + ":")


def record(settings: Settings, signals: Iterable[Signal], scopes: Sequence[str], now: datetime) -> int:
    """Apply ``signals`` to the stored alerts; resolve firing alerts in ``scopes`` no signal reports.
    Returns how many alerts changed state."""
    coll = _collection(settings)
    to = targets(settings)
    changed, seen = 0, set()
    for signal in signals:
        seen.add(signal.key)
        if signal.firing is None:
            continue
        doc = coll.find_one({"key": signal.key})
        if signal.firing:
            changed += _fire(coll, doc, signal, to, settings.alert_renotify_s, now)
        elif doc and doc["state"] == "firing":
            changed += _resolve(coll, doc, to, now, signal.summary)
    for doc in coll.find({"state": "firing"}):
        if doc["key"] not in seen and any(_scope(scope, doc["key"]) for scope in scopes):
            changed += _resolve(coll, doc, to, now, "")
    return changed


def _fire(coll: Any, doc: Mapping[str, Any] | None, signal: Signal, to: list[str], renotify_s: int,
          now: datetime) -> int:
    fields = {"kind": signal.kind, "subject": signal.subject, "severity": signal.severity, "summary": signal.summary,
              "last_seen": now, "state": "firing", "resolved_at": None}
    if doc is None or doc["state"] != "firing":  # a new firing: delivered to every target
        fields.update(since=now, pending={t: "firing" for t in to})
        coll.update_one({"key": signal.key}, {"$set": fields, "$inc": {"count": 1},
                                              "$setOnInsert": {"first_seen": now}}, upsert=True)
        log.warning("alert firing: %s", signal.key)
        return 1
    last = doc.get("notified_at") or doc.get("since")  # never delivered (no target then): from its start
    if last is not None and last.tzinfo is None:
        last = last.replace(tzinfo=UTC)
    if last is not None and (now - last).total_seconds() >= renotify_s:
        fields["pending"] = {t: "firing" for t in to}  # still firing: remind
    coll.update_one({"key": signal.key}, {"$set": fields, "$inc": {"count": 1}})
    return 0


def _resolve(coll: Any, doc: Mapping[str, Any], to: list[str], now: datetime, summary: str) -> int:
    fields: dict[str, Any] = {"state": "resolved", "resolved_at": now, "pending": {t: "resolved" for t in to}}
    if summary:
        fields["summary"] = summary
    coll.update_one({"key": doc["key"]}, {"$set": fields})
    log.info("alert resolved: %s", doc["key"])
    return 1


class _TargetDown(Exception):
    """A target that already failed in this evaluation (its error's name as the argument)."""


def deliver_pending(settings: Settings, now: datetime) -> dict[str, int]:
    """Send every pending change to its target; a failure stays pending (retried next time), never raises.
    Returns {"delivered": n, "failed": n}."""
    from nimbus.alerts.delivery import DELIVERERS, payload

    coll = _collection(settings)
    result = {"delivered": 0, "failed": 0}
    down: dict[str, str] = {}  # target -> its error this time: not tried again (a dead webhook costs one timeout)
    for doc in [d for d in coll.find({"pending": {"$exists": True}}) if d.get("pending")]:
        for target in list(doc.get("pending") or {}):
            if target not in DELIVERERS or target not in targets(settings):
                coll.update_one({"key": doc["key"]}, {"$unset": {f"pending.{target}": ""}})
                continue
            try:
                if target in down:
                    raise _TargetDown(down[target])
                DELIVERERS[target](settings, payload(doc))
            except Exception as exc:  # noqa: BLE001 - any failure of a target: keep it pending, log, go on
                error = down.setdefault(target, exc.args[0] if isinstance(exc, _TargetDown) else type(exc).__name__)
                result["failed"] += 1
                log.warning("alert %s: delivery to %s failed (%s); retried at the next evaluation",
                            doc["key"], target, error)
                coll.update_one({"key": doc["key"]}, {"$set": {"last_error": f"{target}: {error}"},
                                                      "$inc": {"attempts": 1}})
                continue
            result["delivered"] += 1
            coll.update_one({"key": doc["key"]}, {"$unset": {f"pending.{target}": ""},
                                                  "$set": {"notified_at": now, "last_error": None}})
    return result


def evaluate(settings: Settings, drift_checks: Sequence[Mapping[str, Any]] | None = None,
             now: datetime | None = None) -> dict[str, Any]:
    """One evaluation (the monitor's schedule): every source, the record, then delivery. Never raises
    for a store that is down; returns {"changed", "delivered", "failed", "skipped": [source names]}."""
    now = now or datetime.now(UTC)
    signals: list[Signal] = []
    scopes: list[str] = []
    skipped: list[str] = []
    if drift_checks is not None:
        signals += drift_signals(drift_checks)
        scopes += ["drift"]
    for name, (kinds, source) in SOURCES.items():
        try:
            signals += source(settings, now)
            scopes += kinds
        except STORE_ERRORS as exc:
            skipped.append(name)
            log.warning("alert source %s skipped: %s", name, type(exc).__name__)
        except Exception:  # a fault in one source must not silence the others or the monitor
            skipped.append(name)
            log.exception("alert source %s failed", name)
    try:
        _ensure_index(settings)
        changed = record(settings, signals, scopes, now)
        delivered = deliver_pending(settings, now)
    except STORE_ERRORS as exc:  # the alert record itself is down: the monitor still answers; next time
        log.warning("alerts not evaluated: %s", type(exc).__name__)
        return {"changed": 0, "delivered": 0, "failed": 0, "skipped": [*skipped, "alerts"]}
    return {"changed": changed, **delivered, "skipped": skipped}


_indexed: set[tuple[str, str]] = set()


def _ensure_index(settings: Settings) -> None:
    """The unique index on the dedup key (once per process and database; create_index is idempotent)."""
    from nimbus.stores.documents import INDEXES, Collections

    if (settings.mongo_url, settings.mongo_db) not in _indexed:
        coll = _collection(settings)
        for keys, options in INDEXES[Collections.ALERTS]:
            coll.create_index(keys, **options)
        _indexed.add((settings.mongo_url, settings.mongo_db))


# ---- reading -----------------------------------------------------------------------------------
def iso(value: datetime | None) -> str | None:
    """A stored time as ISO-8601 UTC text (``Z``); the store may hand back naive UTC."""
    if value is None:
        return None
    moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def public(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A stored alert as JSON-able data (times ISO 8601 UTC)."""
    return {"key": doc["key"], "kind": doc["kind"], "subject": doc["subject"], "state": doc["state"],
            "severity": doc.get("severity", "warning"), "summary": doc.get("summary", ""),
            "first_seen": iso(doc.get("first_seen")), "since": iso(doc.get("since")),
            "last_seen": iso(doc.get("last_seen")), "resolved_at": iso(doc.get("resolved_at")),
            "count": doc.get("count", 0), "notified_at": iso(doc.get("notified_at")),
            "pending": sorted(doc.get("pending") or {}), "last_error": doc.get("last_error")}


def list_alerts(settings: Settings, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Stored alerts, firing first, then by last seen, newest first (see the module docstring)."""
    from nimbus.errors import InvalidInput

    if state not in (None, "firing", "resolved"):
        raise InvalidInput(f"state must be firing or resolved; got {state!r}")
    docs = list(_collection(settings).find({"state": state} if state else {}).sort("last_seen", -1).limit(limit))
    docs.sort(key=lambda d: d["state"] != "firing")  # stable: newest first within each state
    return [public(d) for d in docs]
