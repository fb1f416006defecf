"""Canary rollouts of registry models, judged by guardrails, stepped up or rolled back by themselves.

``start`` points the ``canary`` alias at a candidate version (through governance, audited) and
writes a rollout document (MongoDB ``rollouts``): the champion it is compared with, the traffic
shares it steps through (``rollout_steps``, e.g. 10 -> 50 -> 100 %), its state. While it runs, the
``predict`` processes route each request for ``model@champion`` by the GrowthBook hash of its routing
key (the ``X-Routing-Key`` header: a user or account id, else the request id) seeded with the
rollout's id: a request whose hash falls under the step's share is answered by the candidate — or,
in **shadow** mode, answered by the champion and also scored by the candidate, whose answer is not
used. A candidate that fails on a request (it cannot load, it errors on a category) never fails
the request: the champion answers and the failure is counted against the candidate.

Each process counts both roles per rollout step (requests, errors, a latency histogram: Redis
``mon:rollout:<id>:<step>:<role>``, buffered like the traffic rollup) and samples the candidate's
inputs and outputs for drift. ``judge`` (the ``monitor`` function on its schedule, ``nimbus models
judge``, ``POST /models/{name}/rollout/judge``) compares them, with an injected clock:

* ``error_rate``: the candidate's error rate minus the champion's, at most ``rollout_max_error_rate``
  (judged as soon as the candidate has ``rollout_fail_fast_errors`` errors);
* ``latency_p99``: the candidate's p99 at most ``rollout_max_p99_ratio`` x the champion's plus
  ``rollout_p99_slack_ms``;
* ``output_psi`` / ``input_psi``: PSI of the candidate's sampled outputs (the score) and of each input
  against the reference logged with it at training (``reference/drift.json``), at most
  ``rollout_max_psi`` (skipped, and said so, when the version has no reference);

A failed guardrail rolls the rollout back (the ``canary`` alias returns to the champion's version);
all passing, once the step has ``rollout_min_requests`` candidate requests and has lasted
``rollout_min_step_s``, it steps up, and the last step (100 %) promotes the candidate to champion.
Every step is on the audit trail with its reason and guardrails; every alias move goes through
:func:`nimbus.governance.move_alias`. A judgement claims the step with a conditional update, so two
monitors judging at once move it once.

Contract (the dashboard and the API read it)::

    status(settings, model) -> {"id", "model", "candidate", "champion", "mode" ("canary" | "shadow"),
        "steps" [%], "step" (index), "share" (%), "state" ("running" | "completed" | "rolled_back" |
        "cancelled"), "started_at", "updated_at", "step_started_at", "ended_at", "by", "reason",
        "guardrails": [{"name", "status" ("pass" | "fail" | "pending" | "skipped"), "value", "limit",
        "detail"}], "counts": {"canary"|"champion": {"requests", "errors", "p50_ms", "p95_ms", "p99_ms"}},
        "history": [{"at", "action", "share", "reason"}]} | None
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from nimbus import audit, governance
from nimbus.config import Settings
from nimbus.errors import Conflict, InvalidInput, NimbusError, NotFound, StoreUnavailable
from nimbus.experiments.assignment import hash_v2
from nimbus.monitoring import traffic
from nimbus.serving.models import ServedModel
from nimbus.serving.samples import PredictionSampler
from nimbus.stores.documents import Collections, DocumentStore
from nimbus.stores.redis.keys import REGISTRY_TOPIC
from nimbus.stores.redis.live import LiveModelStore
from nimbus.stores.redis.telemetry import TelemetryStore
from nimbus.stores.registry import Registry
from nimbus.swap import LiveView

log = logging.getLogger("nimbus.serving.rollout")

CANARY_ALIAS = "canary"  # the candidate's alias while it is rolled out
CANARY, CHAMPION = "canary", "champion"  # the roles a request's answer is counted under
ROLES = (CANARY, CHAMPION)
RUNNING, COMPLETED, ROLLED_BACK, CANCELLED = "running", "completed", "rolled_back", "cancelled"
STARTING = "starting"  # written, its canary alias not yet moved: not routed
PASS, FAIL, PENDING, SKIPPED = "pass", "fail", "pending", "skipped"
COUNTS_TTL_S = 14 * 86400
Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


def _collection(settings: Settings) -> Any:
    return DocumentStore.for_settings(settings).collection(Collections.ROLLOUTS)


# ---- routing (the predict processes) -----------------------------------------------------------
@dataclass(frozen=True)
class Route:
    """What a predict process needs to route one model's requests during a rollout."""

    id: str
    model: str
    step: int
    share: float  # 0..1 of the traffic the candidate answers (or, in shadow, scores)
    shadow: bool
    candidate: str
    champion: str

    def takes(self, key: str) -> bool:
        """Whether the request with routing key ``key`` goes to the candidate (deterministic per key)."""
        return hash_v2(self.id, key) < self.share


def running_routes(settings: Settings) -> dict[str, Route]:
    """The route of every running rollout, by model."""
    return {d["model"]: Route(d["_id"], d["model"], d["step"], d["steps"][d["step"]] / 100, d["mode"] == "shadow",
                              d["candidate"], d["champion"])
            for d in _collection(settings).find({"state": RUNNING})}


class RolloutRoutes(LiveView[Mapping[str, Route]]):
    """The running rollouts a predict process routes by: re-read when one is announced and on a poll."""

    def __init__(self, settings: Settings, poll_s: float | None = None) -> None:
        super().__init__(MappingProxyType({}), LiveModelStore.for_settings(settings), (REGISTRY_TOPIC,),
                         settings.predict_poll_s if poll_s is None else poll_s, name="rollout-routes", logger=log)
        self.settings = settings

    def build(self, old: Mapping[str, Route]) -> Mapping[str, Route] | None:
        new = running_routes(self.settings)
        return MappingProxyType(new) if new != dict(old) else None

    def describe(self, state: Mapping[str, Route]) -> str:
        return ", ".join(f"{m}: v{r.candidate} at {r.share:.0%}{' (shadow)' if r.shadow else ''}"
                         for m, r in sorted(state.items())) or "no rollout"


class RolloutCounts(traffic.Rollup):
    """This process's counts per (rollout, step, role), added to Redis by a background thread."""

    thread_name = "rollout-counts"

    def count(self, route: Route, role: str, latency_ms: float, error: bool) -> None:
        self._rows.add((route.id, route.step, role), latency_ms, error)
        if not self._started:
            self._start()

    def write(self, counts: dict[Any, dict[str, int]]) -> None:
        TelemetryStore.for_settings(self.settings).add_rollout_counts(counts, COUNTS_TTL_S)


class Router:
    """How a predict process answers a request that falls in a running rollout, and counts it.

    The candidate answers its share of keys — or, in shadow, scores them beside the champion, which answers.
    A candidate that cannot load or raises never fails the request: the champion answers and the failure
    counts against the candidate (unless the champion fails too: then the request was at fault). Both
    roles' answers are counted per step; the candidate's are sampled at ``rollout_sample_rate`` for the
    PSI guardrails, the champion's by the process's drift ``sampler``."""

    def __init__(self, settings: Settings, sampler: PredictionSampler) -> None:
        self.counts = RolloutCounts(settings)
        self.sampler = sampler
        self.candidate_sampler = PredictionSampler(LiveModelStore.for_settings(settings), settings.rollout_sample_rate)

    def answer(self, route: Route, champion: ServedModel, records: list[Any], key: str,
               get: Callable[[str, str], ServedModel], limit: int) -> tuple[ServedModel, list[dict[str, Any]], str]:
        """(who answered, the predictions, its role) for ``records`` routed by ``key``. ``get`` loads the
        candidate; its LookupError (not loaded in this form here yet) is the caller's to handle."""
        if not route.takes(key):
            return champion, self._champion(route, champion, records, limit), CHAMPION
        candidate: ServedModel | None = None
        failure: Exception | None = None
        elapsed = 0.0
        try:
            candidate = get(route.model, CANARY_ALIAS)
        except LookupError:
            raise
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot load is the candidate's failure
            failure = exc
        if route.shadow:
            predictions = self._champion(route, champion, records, limit)
            if candidate is not None:
                _, failure, elapsed = self._candidate(route, candidate, records, limit)
            if failure is not None:
                self.counts.count(route, CANARY, elapsed, True)
                log.warning("shadow candidate %s v%s failed: %s: %s", route.model, route.candidate,
                            type(failure).__name__, str(failure)[:200])
            return champion, predictions, CHAMPION
        if candidate is not None:
            answered, failure, _ = self._candidate(route, candidate, records, limit)
            if answered is not None:
                return candidate, answered, CANARY
        predictions = champion.predict(records, limit)  # a request at fault fails here, uncounted
        self.counts.count(route, CANARY, 0.0, True)
        self.sampler.add(route.model, champion.version, records, predictions)
        log.warning("candidate %s v%s failed, the champion answered: %s: %s", route.model, route.candidate,
                    type(failure).__name__, str(failure)[:200])
        return champion, predictions, CHAMPION

    def _champion(self, route: Route, served: ServedModel, records: list[Any], limit: int) -> list[dict[str, Any]]:
        start = time.perf_counter()
        try:
            predictions = served.predict(records, limit)
        except NimbusError:
            raise  # the request's fault (a 422), not the model's
        except Exception:
            self.counts.count(route, CHAMPION, (time.perf_counter() - start) * 1000.0, True)
            raise
        self.counts.count(route, CHAMPION, (time.perf_counter() - start) * 1000.0, False)
        self.sampler.add(route.model, served.version, records, predictions)
        return predictions

    def _candidate(self, route: Route, candidate: ServedModel, records: list[Any],
                   limit: int) -> tuple[list[dict[str, Any]] | None, Exception | None, float]:
        """(predictions, None, ms) counted and sampled; or (None, the failure, ms), left to the caller to count."""
        start = time.perf_counter()
        try:
            predictions = candidate.predict(records, limit)
        except Exception as exc:  # noqa: BLE001 - the caller decides whose failure it is
            return None, exc, (time.perf_counter() - start) * 1000.0
        elapsed = (time.perf_counter() - start) * 1000.0
        self.counts.count(route, CANARY, elapsed, False)
        self.candidate_sampler.add(route.model, candidate.version, records, predictions)
        return predictions, None, elapsed

    def close(self) -> None:
        """Write what is counted and sampled (a process shutting down)."""
        self.counts.flush()
        self.counts.stop()
        self.candidate_sampler.close()


def _announce(settings: Settings, doc: Mapping[str, Any]) -> None:
    try:
        LiveModelStore.for_settings(settings).publish(
            REGISTRY_TOPIC, f'{{"model": "{doc["model"]}", "rollout": "{doc["_id"]}"}}')
    except StoreUnavailable as exc:  # the predict processes see it on their next poll
        log.warning("rollout %s not announced: %s", doc["_id"], exc)


# ---- starting, cancelling, reading ---------------------------------------------------------------
def parse_share(text: str | float | int) -> float:
    """``10%``, ``10`` or ``0.1``-style? No: a percentage, 1-99, with or without ``%``."""
    raw = str(text).strip().removesuffix("%").strip()
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"canary: {text!r} is not a percentage (e.g. 10%)") from None
    if not 0 < value < 100 or not math.isfinite(value):
        raise InvalidInput(f"canary: the share must be above 0% and below 100%; got {text!r}")
    return value


def plan_steps(settings: Settings, share: float, steps: Sequence[float] | None = None) -> list[float]:
    """The shares a rollout starting at ``share`` steps through, ending at 100."""
    given = list(steps) if steps else [float(s) for s in settings.rollout_steps.split(",")]
    if any(not 0 < s <= 100 for s in given) or given != sorted(set(given)):
        raise InvalidInput(f"steps: increasing percentages in (0, 100]; got {given}")
    plan = [share, *[s for s in given if s > share]]
    return plan if plan[-1] == 100 else [*plan, 100.0]


def start(settings: Settings, name: str, version: str, share: str | float = 10, *, shadow: bool = False,
          steps: Sequence[float] | None = None, reason: str | None = None, who: str | None = None,
          clock: Clock = _now) -> dict[str, Any]:
    """Roll ``name`` version ``version`` out against its champion (see the module docstring)."""
    percent = parse_share(share)
    plan = plan_steps(settings, percent, steps)
    registry = Registry.for_settings(settings)
    version = str(registry.version(name, version).version)  # NotFound before anything moves
    try:
        champion = registry.alias(name, CHAMPION).version
    except NotFound:
        raise NotFound(f"{name} has no champion to compare a canary with: promote a first version "
                       f"(`nimbus models promote {name} <version>`)") from None
    if champion == version:
        raise Conflict(f"{name} version {version} is already the champion")
    running = _collection(settings).find_one({"model": name, "active": name})
    if running is not None:
        raise Conflict(f"{name} already has a rollout running ({running['_id']}: version {running['candidate']} at "
                       f"{running['steps'][running['step']]:g}%); cancel it first (`nimbus models rollout-cancel {name}`)")
    at = clock()
    rollout_id = f"ro-{at:%Y%m%dT%H%M%S}-{os.urandom(3).hex()}"
    mode = "shadow" if shadow else "canary"
    why = reason or f"{mode} rollout {rollout_id} of v{version} against champion v{champion}: {plan[0]:g}%"
    doc = {"_id": rollout_id, "model": name, "candidate": version, "champion": champion, "mode": mode,
           "steps": plan, "step": 0, "state": STARTING, "active": name, "started_at": at, "updated_at": at,
           "step_started_at": at, "ended_at": None, "by": who or audit.actor(settings), "reason": why,
           "guardrails": [], "history": [{"at": at, "action": "start", "share": plan[0], "reason": why}]}
    try:
        _collection(settings).insert_one(doc)
    except Exception as exc:
        import pymongo.errors

        if isinstance(exc, pymongo.errors.DuplicateKeyError):  # another start won the race
            raise Conflict(f"{name} already has a rollout running") from None
        raise
    try:
        _move_canary(settings, name, version, "rollout_start", why, who)
    except Exception:
        _collection(settings).delete_one({"_id": rollout_id})  # nothing was routed to it
        raise
    # Routed only now: the candidate's alias and its audited move are in place for the predict processes.
    _collection(settings).update_one({"_id": rollout_id}, {"$set": {"state": RUNNING}})
    doc["state"] = RUNNING
    _announce(settings, doc)
    return public(doc)


def _move_canary(settings: Settings, name: str, version: str, action: str, reason: str, who: str | None) -> None:
    try:
        governance.move_alias(settings, name, CANARY_ALIAS, version, action=action, reason=reason, who=who)
    except Conflict:  # already there: record the step anyway (force), so the trail says why
        governance.move_alias(settings, name, CANARY_ALIAS, version, action=action, reason=reason, who=who,
                              force=True)


def cancel(settings: Settings, name: str, reason: str | None = None, who: str | None = None,
           clock: Clock = _now) -> dict[str, Any]:
    """Stop ``name``'s running rollout: all traffic back to the champion (audited)."""
    doc = _collection(settings).find_one({"model": name, "active": name})  # running, or stuck starting
    if doc is None:
        raise NotFound(f"{name} has no rollout running")
    why = reason or f"rollout {doc['_id']} cancelled at {doc['steps'][doc['step']]:g}%"
    return _end(settings, doc, CANCELLED, "cancel", why, who, clock(), [])


def status(settings: Settings, name: str) -> dict[str, Any] | None:
    """The running rollout of ``name``, else its latest, with the current step's counts; None if none."""
    docs = list(_collection(settings).find({"model": name}).sort("started_at", -1).limit(1))
    if not docs:
        return None
    doc = public(docs[0])
    try:
        doc["counts"] = step_counts(settings, docs[0])
    except StoreUnavailable as exc:
        doc["counts"] = {"error": str(exc)}
    return doc


def history(settings: Settings, name: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """Rollouts, newest first (of one model, or of all)."""
    query = {"model": name} if name else {}
    return [public(d) for d in _collection(settings).find(query).sort("started_at", -1).limit(limit)]


def public(doc: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in doc.items() if k not in ("_id", "active")}
    out["id"] = doc["_id"]
    out["share"] = doc["steps"][doc["step"]] if doc["state"] == RUNNING else (
        100.0 if doc["state"] == COMPLETED else 0.0)
    for key in ("started_at", "updated_at", "step_started_at", "ended_at"):
        if isinstance(out.get(key), datetime):
            out[key] = _iso(out[key])
    out["history"] = [{**h, "at": _iso(h["at"]) if isinstance(h["at"], datetime) else h["at"]}
                      for h in doc.get("history", [])]
    return out


def _iso(at: datetime) -> str:
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).isoformat()


# ---- judging -----------------------------------------------------------------------------------
TAIL_ANSWERS = 5  # a tail latency is compared only where this many of the candidate's answers lie above it


def tail_quantile(answers: int) -> float:
    """The latency quantile a step compares: the p99 once the candidate has 500 answers; before, the
    quantile with TAIL_ANSWERS answers above it (the p99 of 40 answers is their slowest: one stall)."""
    return max(0.5, min(0.99, 1.0 - TAIL_ANSWERS / answers)) if answers else 0.99


def step_counts(settings: Settings, doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each role's requests, errors and latency percentiles in the rollout's current step, and
    ``tail_ms``: both roles' latency at the candidate's :func:`tail_quantile` (``tail_q``)."""
    raw = TelemetryStore.for_settings(settings).rollout_counts(doc["_id"], doc["step"], ROLES)
    q = tail_quantile(raw[CANARY].get(traffic.REQUESTS, 0))
    out = {}
    for role in ROLES:
        hist = [raw[role].get(f, 0) for f in traffic.HIST_FIELDS]
        out[role] = {**{k: v for k, v in traffic.stats([raw[role]]).items() if k != "degraded"},
                     "tail_q": q, "tail_ms": traffic.percentile(hist, q)}
    return out


def _guard(name: str, status: str, value: float | None, limit: float | None, detail: str) -> dict[str, Any]:
    return {"name": name, "status": status, "value": None if value is None else round(value, 6),
            "limit": limit, "detail": detail}


def guardrails(settings: Settings, doc: Mapping[str, Any], counts: Mapping[str, Mapping[str, Any]],
               rows: Sequence[Mapping[str, Any]] | None = None,
               reference: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each guardrail's verdict on one step's counts and the candidate's sampled rows (pure: tested alone)."""
    cand, champ = counts[CANARY], counts[CHAMPION]
    enough = cand["requests"] >= settings.rollout_min_requests
    out = []
    rate_c = cand["errors"] / cand["requests"] if cand["requests"] else 0.0
    rate_0 = champ["errors"] / champ["requests"] if champ["requests"] else 0.0
    limit = settings.rollout_max_error_rate
    if enough or cand["errors"] >= settings.rollout_fail_fast_errors:
        failed = rate_c - rate_0 > limit
        out.append(_guard("error_rate", FAIL if failed else PASS, rate_c, limit,
                          f"candidate {cand['errors']}/{cand['requests']} errors ({rate_c:.2%}), champion "
                          f"{champ['errors']}/{champ['requests']} ({rate_0:.2%}); allowed +{limit:.2%}"))
    else:
        out.append(_guard("error_rate", PENDING, rate_c, limit,
                          f"{cand['requests']}/{settings.rollout_min_requests} candidate requests"))
    tail_c, tail_0, q = cand["tail_ms"], champ["tail_ms"], f"p{cand['tail_q'] * 100:g}"
    if not enough or tail_c is None:
        out.append(_guard("latency_p99", PENDING, tail_c, None, "waiting for the step's candidate requests"))
    elif tail_0 is None:
        out.append(_guard("latency_p99", SKIPPED, tail_c, None, "the champion answered no request in this step"))
    else:
        allowed = tail_0 * settings.rollout_max_p99_ratio + settings.rollout_p99_slack_ms
        out.append(_guard("latency_p99", FAIL if tail_c > allowed else PASS, tail_c, round(allowed, 3),
                          f"candidate {q} {tail_c:.2f} ms, champion {tail_0:.2f} ms; allowed {allowed:.2f} ms"
                          + ("" if q == "p99" else f" ({q}: the p99 needs 500 candidate answers)")))
    # Samples reach Redis a flush (a second) after the counts: wait for them while the sampled share says
    # they are coming; only far past that (5x the samples expected) is a missing sample called skipped.
    coming = cand["requests"] * settings.rollout_sample_rate < 5 * settings.drift_min_samples
    out.extend(_psi_guards(settings, rows or [], reference, not enough or coming))
    return out


def _psi_guards(settings: Settings, rows: Sequence[Mapping[str, Any]], reference: Mapping[str, Any] | None,
                wait: bool) -> list[dict[str, Any]]:
    from nimbus.monitoring.drift import compare

    limit = settings.rollout_max_psi
    if reference is None:
        why = "the candidate version logged no training reference (reference/drift.json)"
        return [_guard("output_psi", SKIPPED, None, limit, why), _guard("input_psi", SKIPPED, None, limit, why)]
    if len(rows) < settings.drift_min_samples:
        status = PENDING if wait else SKIPPED
        why = f"{len(rows)}/{settings.drift_min_samples} sampled candidate answers in this step"
        return [_guard("output_psi", status, None, limit, why), _guard("input_psi", status, None, limit, why)]
    found = compare(reference, rows, settings)
    # PSI is noisy on a few hundred samples: a guardrail fails when the PSI passes the limit AND the
    # two-sample test says the move is not noise (p below drift_p_value; over the inputs, Bonferroni-corrected
    # for their number), as the drift check judges.
    p_max = settings.drift_p_value
    score = found["score"]
    psi_out, p_out = score["psi"], score.get("ks_p")
    failed = psi_out is not None and psi_out > limit and p_out is not None and p_out < p_max
    out = [_guard("output_psi", SKIPPED if psi_out is None else FAIL if failed else PASS, psi_out, limit,
                  f"PSI of {len(rows)} sampled outputs against the training reference"
                  + (f" (KS p = {p_out:.2g})" if p_out is not None else ""))]
    inputs = [(f["psi"], f["name"], f["ks_p"] if f["ks_p"] is not None else f["chi2_p"])
              for f in found["features"] if f["psi"] is not None]
    if not inputs:
        out.append(_guard("input_psi", SKIPPED, None, limit, "no input in the reference"))
        return out
    corrected = p_max / len(inputs)
    moved = [(v, n, p) for v, n, p in inputs if v > limit and p is not None and p < corrected]
    worst, feature, p = max(moved or inputs, key=lambda t: t[0])
    out.append(_guard("input_psi", FAIL if moved else PASS, worst, limit,
                      f"largest input PSI: {feature} ({worst:.3f}"
                      + (f", p = {p:.2g}" if p is not None else "") + f") over {len(rows)} sampled inputs"))
    return out


def candidate_rows(settings: Settings, doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The candidate's sampled answers (drift rows) since its step started."""
    from nimbus.monitoring.drift import live_rows

    since = doc["step_started_at"]
    since_ts = (since if since.tzinfo else since.replace(tzinfo=UTC)).timestamp()
    return [r for r in live_rows(settings, doc["model"])
            if str(r.get("model_version")) == doc["candidate"] and r.get("ts", 0) >= since_ts]


def judge(settings: Settings, name: str | None = None, who: str | None = None,
          clock: Clock = _now) -> list[dict[str, Any]]:
    """Judge every running rollout (of ``name``): a decision each — hold, step, complete, roll back."""
    query: dict[str, Any] = {"state": RUNNING, **({"model": name} if name else {})}
    decisions = []
    for doc in list(_collection(settings).find(query)):
        try:
            decisions.append(_judge_one(settings, doc, who, clock()))
        except (NimbusError, StoreUnavailable) as exc:  # one rollout's trouble never stops the others' judgement
            log.warning("rollout %s not judged: %s", doc["_id"], exc)
            decisions.append({"model": doc["model"], "rollout": doc["_id"], "action": "error", "reason": str(exc),
                              "state": doc["state"], "share": doc["steps"][doc["step"]], "guardrails": []})
    return decisions


def _judge_one(settings: Settings, doc: dict[str, Any], who: str | None, now: datetime) -> dict[str, Any]:
    from nimbus.monitoring.drift import load_reference

    champion = _champion(settings, doc["model"])
    if champion != doc["champion"]:
        why = (f"the champion moved outside the rollout (v{doc['champion']} -> v{champion}); "
               "the comparison no longer holds")
        return _decision(_end(settings, doc, CANCELLED, "cancel", why, who, now, []), "cancel", why)
    counts = step_counts(settings, doc)
    reference = load_reference(settings, doc["model"], doc["candidate"])
    rows = candidate_rows(settings, doc) if reference is not None else []
    guards = guardrails(settings, doc, counts, rows, reference)
    return _decide(settings, doc, counts, guards, who, now)


def _champion(settings: Settings, name: str) -> str | None:
    try:
        return Registry.for_settings(settings).alias(name, CHAMPION).version
    except NotFound:
        return None


def _decision(doc: Mapping[str, Any], action: str, reason: str) -> dict[str, Any]:
    return {"model": doc["model"], "rollout": doc["id"], "action": action, "reason": reason,
            "state": doc["state"], "share": doc["share"], "guardrails": doc.get("guardrails", [])}


def _elapsed_s(doc: Mapping[str, Any], now: datetime) -> float:
    started = doc["step_started_at"]
    return (now - (started if started.tzinfo else started.replace(tzinfo=UTC))).total_seconds()


def _decide(settings: Settings, doc: dict[str, Any], counts: Mapping[str, Any], guards: list[dict[str, Any]],
            who: str | None, now: datetime) -> dict[str, Any]:
    share = doc["steps"][doc["step"]]
    failed = [g for g in guards if g["status"] == FAIL]
    if failed:
        why = f"rolled back at {share:g}%: " + "; ".join(f"{g['name']} failed ({g['detail']})" for g in failed)
        return _decision(_end(settings, doc, ROLLED_BACK, "rollback", why, who, now, guards), "rollback", why)
    pending = [g for g in guards if g["status"] == PENDING]
    elapsed = _elapsed_s(doc, now)
    if pending or elapsed < settings.rollout_min_step_s:
        waits = [f"{g['name']}: {g['detail']}" for g in pending]
        if elapsed < settings.rollout_min_step_s:
            waits.append(f"step running {elapsed:.0f}/{settings.rollout_min_step_s:g} s")
        why = f"holding at {share:g}%: " + "; ".join(waits)
        _collection(settings).update_one({"_id": doc["_id"], "state": RUNNING, "step": doc["step"]},
                                         {"$set": {"guardrails": guards, "updated_at": now, "judged": why}})
        return _decision({**public(doc), "guardrails": guards}, "hold", why)
    passed = ", ".join(f"{g['name']} {g['status']}" for g in guards)
    if doc["step"] + 1 == len(doc["steps"]) - 1:  # the next step is 100%: the candidate becomes champion
        why = f"guardrails passed at {share:g}% ({passed}): v{doc['candidate']} promoted to champion"
        return _decision(_end(settings, doc, COMPLETED, "complete", why, who, now, guards), "complete", why)
    nxt = doc["steps"][doc["step"] + 1]
    why = f"guardrails passed at {share:g}% ({passed}): stepped up to {nxt:g}%"
    entry = {"at": now, "action": "step", "share": nxt, "reason": why}
    moved = _collection(settings).find_one_and_update(
        {"_id": doc["_id"], "state": RUNNING, "step": doc["step"]},
        {"$set": {"step": doc["step"] + 1, "step_started_at": now, "updated_at": now, "guardrails": guards,
                  "judged": why}, "$push": {"history": entry}}, return_document=True)
    if moved is None:
        return _decision({**public(doc)}, "none", "judged by another process meanwhile")
    audit.record(settings, "rollout_step", f"model:{doc['model']}", "succeeded", who=who,
                 models={doc["model"]: doc["candidate"]},
                 details={"rollout": doc["_id"], "from_share": share, "to_share": nxt, "reason": why,
                          "guardrails": guards, "counts": counts})
    _announce(settings, moved)
    return _decision(public(moved), "step", why)


def _end(settings: Settings, doc: dict[str, Any], state: str, action: str, reason: str, who: str | None,
         now: datetime, guards: list[dict[str, Any]]) -> dict[str, Any]:
    """Claim the step, move the aliases through governance, then record the end (and announce it)."""
    claimed = _collection(settings).find_one_and_update(
        {"_id": doc["_id"], "state": {"$in": [RUNNING, STARTING]}, "step": doc["step"]},
        {"$set": {"state": f"{state}:pending", "updated_at": now}}, return_document=True)
    if claimed is None:
        raise Conflict(f"rollout {doc['_id']} was judged by another process meanwhile")
    try:
        if state == COMPLETED:
            governance.move_alias(settings, doc["model"], CHAMPION, doc["candidate"], action="rollout_promote",
                                  reason=reason, who=who)
        else:
            _move_canary(settings, doc["model"], doc["champion"], f"rollout_{action}", reason, who)
    except Exception:
        _collection(settings).update_one({"_id": doc["_id"]}, {"$set": {"state": RUNNING}})  # judged again later
        raise
    entry = {"at": now, "action": action, "share": 100.0 if state == COMPLETED else 0.0, "reason": reason}
    ended = _collection(settings).find_one_and_update(
        {"_id": doc["_id"]},
        {"$set": {"state": state, "active": f"ended:{doc['_id']}", "updated_at": now, "ended_at": now,
                  "guardrails": guards or doc.get("guardrails", []), "judged": reason},
         "$push": {"history": entry}}, return_document=True)
    _announce(settings, ended)
    return public(ended)
