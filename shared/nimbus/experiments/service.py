"""Experiments: define, start, stop, list and read results (MongoDB is the record).

An experiment splits one *surface* (today: ``recommendations``) between variants, each
a model of ``nimbus-recommender`` — a registry alias (``champion``, ``challenger``) or a
version (``"3"``) — with a traffic weight; weights sum to 1. Life: ``draft`` -> ``running``
-> ``stopped``. Starting one resolves each variant to a registry version, makes sure
every serving process has that model live (publishing it to Redis if needed — a version
variant is served under the live alias ``v{version}``), then claims the surface in Redis
atomically: a second running experiment on the same surface is refused (409). Stopping
releases the surface, persists the logs and freezes the final counts in the document.

Contract (used by the dashboard; every value JSON-able):

``list_experiments(settings) -> list[dict]``: the public form of each experiment, newest
first: ``{id, name, surface, status, variants: [{name, model, weight, version}], seed,
metric, description, created_at, started_at, stopped_at}`` (times ISO-8601 or None;
``version`` is the registry version a variant resolved to when it started, else None).

``results(settings, experiment_id) -> dict``::

    {experiment: {...as above...},
     variants: [{name, exposures, users, clicks, purchases,
                 metrics: {ctr: {rate, ci95: [lo, hi], lift, p_value, chance_to_beat_control},
                           conversion: {...same...}}}],      # control (first variant) first;
                                                            # lift/p/chance are None for it
     srm: {chi2, p_value, flagged, observed, expected},      # users per variant vs weights
     verdict: {status: "insufficient_data" | "winner" | "no_difference", winner, metric, reason},
     min_exposures, source: "live" | "final"}

``ctr`` = answers with a click / answers; ``conversion`` = answers with a purchase /
answers (per exposure, not per user) — see :mod:`nimbus.experiments.stats`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator

from nimbus import audit
from nimbus.config import Settings
from nimbus.errors import Conflict, InvalidInput, NimbusError, NotFound, StoreUnavailable
from nimbus.experiments import stats
from nimbus.experiments.assignment import bucket_ranges
from nimbus.stores.documents import Collections, DocumentStore
from nimbus.stores.redis.experiments import ExperimentStore
from nimbus.stores.redis.live import LiveModelStore

log = logging.getLogger("nimbus.experiments")

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MODEL = r"^([A-Za-z][A-Za-z0-9_-]{0,63}|[0-9]{1,9})$"
WEIGHT_TOLERANCE = 1e-6


class ExperimentConflict(Conflict):
    """The experiment's state forbids the action, or another experiment runs on its surface."""


class VariantSpec(BaseModel):
    name: str = Field(pattern=NAME, examples=["control"])
    model: str = Field(pattern=MODEL, examples=["champion"],
                       description="A registry alias of nimbus-recommender (champion, challenger) or a version (\"3\").")
    weight: float = Field(gt=0, le=1, examples=[0.5], description="Share of users; the weights sum to 1.")


class ExperimentSpec(BaseModel):
    """A new experiment (created as a draft)."""

    model_config = {"extra": "forbid", "json_schema_extra": {"examples": [{
        "name": "ranker-v4-vs-v3", "surface": "recommendations", "metric": "ctr",
        "variants": [{"name": "control", "model": "champion", "weight": 0.5},
                     {"name": "treatment", "model": "challenger", "weight": 0.5}]}]}}

    name: str = Field(pattern=NAME, examples=["ranker-v4-vs-v3"])
    surface: Literal["recommendations"] = Field(default="recommendations",
                                                description="Where the variants are served.")
    variants: Annotated[list[VariantSpec], Field(min_length=2, max_length=10,
                                                 description="Control first; weights sum to 1.")]
    seed: str | None = Field(default=None, max_length=64, description="Hash seed (default: the experiment id).")
    metric: Literal["ctr", "conversion"] = Field(default="ctr", description="The metric the verdict is decided on.")
    description: str | None = Field(default=None, max_length=500)

    @field_validator("variants")
    @classmethod
    def _weights_and_names(cls, variants: list[VariantSpec]) -> list[VariantSpec]:
        total = sum(v.weight for v in variants)
        if abs(total - 1) > WEIGHT_TOLERANCE:
            raise ValueError(f"variant weights must sum to 1; they sum to {total:g} "
                             f"({' + '.join(f'{v.weight:g}' for v in variants)})")
        names = [v.name for v in variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique; got {names}")
        return variants


def _collection(settings: Settings):
    return DocumentStore.for_settings(settings).collection(Collections.EXPERIMENTS)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def public(doc: dict[str, Any]) -> dict[str, Any]:
    """The experiment as the API, the CLI and the dashboard see it."""
    resolved = doc.get("resolved") or {}
    return {
        "id": doc["_id"], "name": doc["name"], "surface": doc["surface"], "status": doc["status"],
        "variants": [{"name": v["name"], "model": v["model"], "weight": v["weight"],
                      "version": resolved.get(v["name"], {}).get("version")} for v in doc["variants"]],
        "seed": doc["seed"], "metric": doc["metric"], "description": doc.get("description"),
        "created_at": _iso(doc.get("created_at")), "started_at": _iso(doc.get("started_at")),
        "stopped_at": _iso(doc.get("stopped_at")),
    }


def _doc(settings: Settings, experiment_id: str) -> dict[str, Any]:
    doc = _collection(settings).find_one({"_id": experiment_id})
    if doc is None:
        raise NotFound(f"no experiment {experiment_id!r}")
    return doc


def _resolve(settings: Settings, variants: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """variant -> {version, alias}: the registry version each variant serves, and the live alias it is served under."""
    from nimbus.recommend.bundle import MODEL_NAME
    from nimbus.stores.registry import Registry

    registry = Registry.for_settings(settings)
    out = {}
    for v in variants:
        model = v["model"]
        try:
            version = registry.resolve(MODEL_NAME, model).version
        except NotFound:
            what = f"version {model}" if model.isdigit() else f"alias {model!r}"
            raise InvalidInput(f"variant {v['name']!r}: {MODEL_NAME} has no {what}") from None
        out[v["name"]] = {"version": version, "alias": f"v{version}" if model.isdigit() else model}
    return out


def create(settings: Settings, spec: ExperimentSpec, who: str | None = None) -> dict[str, Any]:
    """Store a new draft experiment (its variants' models must exist in the registry)."""
    variants = [v.model_dump() for v in spec.variants]
    _resolve(settings, variants)  # fail now, not at start, on a model that does not exist
    experiment_id = f"exp-{uuid.uuid4().hex[:10]}"
    doc = {"_id": experiment_id, "name": spec.name, "surface": spec.surface, "status": "draft",
           "variants": variants, "seed": spec.seed or experiment_id, "metric": spec.metric,
           "description": spec.description, "created_at": datetime.now(UTC), "started_at": None,
           "stopped_at": None}
    _collection(settings).insert_one(doc)
    audit.record(settings, "experiment.create", f"experiment:{experiment_id}", "succeeded", who=who,
                 details={"name": spec.name, "variants": variants})
    return public(doc)


def start(settings: Settings, experiment_id: str, who: str | None = None) -> dict[str, Any]:
    """Resolve the variants, make their models live, claim the surface, mark running."""
    from nimbus.recommend.bundle import MODEL_NAME
    from nimbus.recommend.models import publish

    doc = _doc(settings, experiment_id)
    if doc["status"] != "draft":
        raise ExperimentConflict(f"experiment {experiment_id} is {doc['status']}; only a draft can start")
    resolved = _resolve(settings, doc["variants"])
    store = ExperimentStore.for_settings(settings)
    live = LiveModelStore.for_settings(settings).live(MODEL_NAME)
    for r in resolved.values():
        if live.get(r["alias"]) != r["version"]:
            publish(settings, r["version"], r["alias"])
    running = {"id": experiment_id, "name": doc["name"], "seed": doc["seed"],
               "variants": [{"name": v["name"], **resolved[v["name"]]} for v in doc["variants"]],
               "ranges": bucket_ranges(len(doc["variants"]), 1.0, [v["weight"] for v in doc["variants"]])}
    if not store.claim_surface(doc["surface"], json.dumps(running)):
        other = store.running_experiments().get(doc["surface"], {})
        raise ExperimentConflict(f"experiment {other.get('id')} ({other.get('name')}) is already running on "
                                 f"{doc['surface']}; stop it first")
    now = datetime.now(UTC)
    _collection(settings).update_one({"_id": experiment_id},
                                     {"$set": {"status": "running", "started_at": now, "resolved": resolved}})
    audit.record(settings, "experiment.start", f"experiment:{experiment_id}", "succeeded", who=who,
                 models={v: r["version"] for v, r in resolved.items()})
    return public(_doc(settings, experiment_id))


def stop(settings: Settings, experiment_id: str, who: str | None = None) -> dict[str, Any]:
    """Persist the logs, release the surface and freeze the final counts — all or nothing:
    the experiment ends stopped, or (on any failure) is left running as it was, its surface
    still claimed, and the error says so."""
    doc = _doc(settings, experiment_id)
    if doc["status"] != "running":
        raise ExperimentConflict(f"experiment {experiment_id} is {doc['status']}; only a running one can stop")
    store = ExperimentStore.for_settings(settings)
    surface = doc["surface"]
    try:
        claimed = store.running_experiments().get(surface)
        persist(settings)  # while it still runs: a failure here has changed nothing
    except Exception as exc:
        raise _not_stopped(experiment_id, exc) from exc
    try:
        store.release_surface(surface, experiment_id)
        counts = store.experiment_counts(experiment_id, [v["name"] for v in doc["variants"]])
        updated = _collection(settings).update_one({"_id": experiment_id, "status": "running"}, {"$set": {
            "status": "stopped", "stopped_at": datetime.now(UTC), "final_counts": counts}})
        if updated.matched_count != 1:
            raise ExperimentConflict(f"experiment {experiment_id} changed state while stopping")
    except Exception as exc:
        if claimed is not None and claimed.get("id") == experiment_id:
            try:  # put the claim back (HSETNX: a no-op if it was never released)
                store.claim_surface(surface, json.dumps(claimed))
            except Exception as again:  # noqa: BLE001 - the first error is the one to report
                log.error("experiment %s: could not restore its claim on %s: %s", experiment_id, surface, again)
        raise _not_stopped(experiment_id, exc) from exc
    audit.record(settings, "experiment.stop", f"experiment:{experiment_id}", "succeeded", who=who,
                 details={"counts": counts})
    return public(_doc(settings, experiment_id))


class ExperimentStopFailed(NimbusError):
    """Stopping failed for a reason other than a store; the experiment is left running."""


def _not_stopped(experiment_id: str, exc: Exception) -> NimbusError:
    """The error of a failed stop, saying the experiment is unchanged; a store's error keeps its type (503)."""
    what = f"experiment {experiment_id} was not stopped and is still running, unchanged"
    if isinstance(exc, ExperimentConflict):
        return ExperimentConflict(f"{exc}; {what}")
    if isinstance(exc, StoreUnavailable):
        return type(exc)(exc.store, exc.url, exc.reason, consequence=what)
    return ExperimentStopFailed(f"{what}: {type(exc).__name__}: {exc}")


def get(settings: Settings, experiment_id: str) -> dict[str, Any]:
    return public(_doc(settings, experiment_id))


def list_experiments(settings: Settings) -> list[dict[str, Any]]:
    """Every experiment, newest first."""
    return [public(d) for d in _collection(settings).find().sort("created_at", -1)]


def results(settings: Settings, experiment_id: str) -> dict[str, Any]:
    """Counts, metrics, SRM and verdict of one experiment (see the module docstring)."""
    return _results(settings, _doc(settings, experiment_id))


def recent_results(settings: Settings, limit: int) -> list[dict[str, Any]]:
    """``results`` of the running experiments first, then of the most recently started others."""
    docs = sorted(_collection(settings).find(), reverse=True,
                  key=lambda d: (d["status"] == "running", d.get("started_at") or datetime.min.replace(tzinfo=UTC)))
    return [_results(settings, doc) for doc in docs[:limit]]


def _results(settings: Settings, doc: dict[str, Any]) -> dict[str, Any]:
    names = [v["name"] for v in doc["variants"]]
    if doc["status"] == "stopped" and doc.get("final_counts"):
        counts, source = doc["final_counts"], "final"
    else:
        counts, source = ExperimentStore.for_settings(settings).experiment_counts(doc["_id"], names), "live"
    rows = [{"name": n, **counts.get(n, {"exposures": 0, "users": 0, "clicks": 0, "purchases": 0})} for n in names]
    analysis = stats.analyse(rows, [v["weight"] for v in doc["variants"]], doc["metric"],
                             settings.experiment_min_exposures)
    return {"experiment": public(doc), **analysis, "min_exposures": settings.experiment_min_exposures,
            "source": source}


def _log_docs(kind: str, rows: list[bytes]) -> tuple[list[tuple[bytes, dict[str, Any]]], list[tuple[bytes, str]]]:
    """(row, MongoDB document) for the A/B log rows that make one, and (row, why) for the others."""
    docs, bad = [], []
    for raw in rows:
        try:
            row = json.loads(raw)
            if not isinstance(row, dict):
                raise ValueError(f"a JSON {type(row).__name__}, not an object")
            if not isinstance(row.get("request_id"), str) or not row["request_id"]:
                raise ValueError("no request_id")
            key = row["request_id"]
            if kind == "outcomes":
                if row.get("type") not in ("click", "purchase"):
                    raise ValueError(f"type {row.get('type')!r} is not click or purchase")
                key = f"{key}:{row['type']}"
            ts = row.get("ts")
            if isinstance(ts, bool) or not isinstance(ts, int | float):
                raise ValueError(f"ts {ts!r} is not a number")
            at = datetime.fromtimestamp(ts, UTC)  # ValueError / OverflowError / OSError past year 9999
        except (ValueError, TypeError, OverflowError, OSError) as exc:
            bad.append((raw, f"{type(exc).__name__}: {exc}"))
            continue
        docs.append((raw, {**row, "_id": key, "at": at}))
    return docs, bad


def _quarantine(documents: DocumentStore, kind: str, bad: list[tuple[bytes, str]]) -> None:
    """Keep rows the rollup could not store, with why (idempotent: keyed by the row's hash)."""
    from pymongo.errors import BulkWriteError

    if not bad:
        return
    now = datetime.now(UTC)
    docs = [{"_id": f"{kind}:{hashlib.sha256(raw).hexdigest()[:32]}", "kind": kind,
             "row": raw.decode("utf-8", "replace"), "reason": reason, "at": now} for raw, reason in bad]
    try:
        documents.collection(Collections.AB_QUARANTINE).insert_many(docs, ordered=False)
    except BulkWriteError as exc:  # the same row quarantined by an earlier, interrupted run is fine
        if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
            raise
    log.warning("quarantined %d %s log rows in %s: %s", len(bad), kind, Collections.AB_QUARANTINE,
                "; ".join(sorted({reason for _, reason in bad}))[:500])


def persist(settings: Settings, batch: int = 5000) -> dict[str, int]:
    """Move the exposure and outcome logs from Redis into MongoDB and roll the performance
    buckets up (the ``experiments`` function's schedule; also run on stop). Idempotent:
    documents are keyed by request id (and outcome type), so a rerun inserts nothing twice.
    A row that cannot be stored (not JSON, no request id, a time past year 9999, refused by
    MongoDB) goes to ``ab_quarantine`` with the reason and is acknowledged like the others,
    so one bad row never stops the rollup; counts: ``{exposures, outcomes, quarantined,
    performance_buckets}``."""
    from pymongo.errors import BulkWriteError

    from nimbus.monitoring.performance import rollup

    store = ExperimentStore.for_settings(settings)
    documents = DocumentStore.for_settings(settings)
    moved = {"quarantined": 0}
    for kind, collection in (("exposures", Collections.EXPOSURES), ("outcomes", Collections.OUTCOMES)):
        total = 0
        while rows := store.peek_log(kind, batch):
            docs, bad = _log_docs(kind, rows)
            if docs:
                try:
                    documents.collection(collection).insert_many([d for _, d in docs], ordered=False)
                except BulkWriteError as exc:  # duplicates from an earlier, interrupted run are fine
                    bad += [(docs[e["index"]][0], f"MongoDB refused it: {e.get('errmsg', e.get('code'))}")
                            for e in exc.details.get("writeErrors", []) if e.get("code") != 11000]
            _quarantine(documents, kind, bad)
            store.ack_log(kind, len(rows))
            total += len(rows) - len(bad)
            moved["quarantined"] += len(bad)
        moved[kind] = total
    moved["performance_buckets"] = rollup(settings)
    return moved
