"""The MongoDB document store: batch results, audit trail, job records, history.

This module owns collection names and their indexes (``Collections``); domain code
asks for ``store.collection(Collections.X)`` and never spells a name itself.
"""

from __future__ import annotations

from typing import Any

import pymongo
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, PyMongoError

from nimbus.config import Settings
from nimbus.errors import StoreUnavailable
from nimbus.stores import Health
from nimbus.stores._base import PerProcess, redact, timed_health


class Collections:
    """Collection names, one place. Later layers add theirs here with their indexes."""

    AUDIT = "audit"
    BATCH_RUNS = "batch_runs"
    BATCH_PREDICTIONS = "batch_predictions"
    MODEL_PERFORMANCE = "model_performance"
    EXPERIMENTS = "experiments"
    EXPOSURES = "experiment_exposures"
    OUTCOMES = "experiment_outcomes"
    RECOMMEND_PERFORMANCE = "recommend_performance"
    DRIFT_CHECKS = "drift_checks"  # one document per scheduled drift check and model version
    DRIFT_ALERTS = "drift_alerts"  # one document per check that crossed a threshold
    AUTOML_JOBS = "automl_jobs"  # one document per AutoML job: request, status, progress, results
    AB_QUARANTINE = "ab_quarantine"  # A/B log rows the rollup could not store: the row as logged and why
    ALERTS = "alerts"  # one document per alert (kind + subject): state, first/last seen, count, deliveries
    ROLLOUTS = "rollouts"  # one document per canary rollout: candidate, steps, state, judgements


# name -> list of (keys, options) passed to create_index
INDEXES: dict[str, list[tuple[list[tuple[str, int]], dict[str, Any]]]] = {
    Collections.AUDIT: [([("at", pymongo.DESCENDING)], {}),
                        ([("subject", pymongo.ASCENDING), ("at", pymongo.DESCENDING)], {})],
    Collections.BATCH_RUNS: [([("status", pymongo.ASCENDING), ("started_at", pymongo.DESCENDING)], {})],
    # one document per block of a run's records (the bucket pattern): multikey on the block's record ids
    Collections.BATCH_PREDICTIONS: [([("run_key", pymongo.ASCENDING), ("record_ids", pymongo.ASCENDING)], {})],
    Collections.MODEL_PERFORMANCE: [([("model", pymongo.ASCENDING), ("version", pymongo.ASCENDING)], {})],
    Collections.EXPERIMENTS: [([("surface", pymongo.ASCENDING), ("status", pymongo.ASCENDING)], {}),
                              ([("name", pymongo.ASCENDING)], {})],
    Collections.EXPOSURES: [([("experiment", pymongo.ASCENDING), ("variant", pymongo.ASCENDING)], {}),
                            ([("user_id", pymongo.ASCENDING), ("ts", pymongo.DESCENDING)], {})],
    Collections.OUTCOMES: [([("experiment", pymongo.ASCENDING), ("variant", pymongo.ASCENDING)], {})],
    Collections.RECOMMEND_PERFORMANCE: [([("bucket", pymongo.ASCENDING)], {})],
    Collections.DRIFT_CHECKS: [([("model", pymongo.ASCENDING), ("checked_at", pymongo.DESCENDING)], {})],
    Collections.DRIFT_ALERTS: [([("raised_at", pymongo.DESCENDING)], {})],
    # by _id (the API's reads); the worker claims the oldest queued job; a queued or running job holds
    # one of its owner's quota slots (unique: two submits cannot take the same one; freed when it ends)
    Collections.ALERTS: [([("key", pymongo.ASCENDING)], {"unique": True, "name": "alert_key"}),
                         ([("state", pymongo.ASCENDING), ("last_seen", pymongo.DESCENDING)], {})],
    # a model's rollouts newest first; "active" holds the model's name while one runs (unique: one at a time)
    Collections.ROLLOUTS: [([("model", pymongo.ASCENDING), ("started_at", pymongo.DESCENDING)], {}),
                           ([("active", pymongo.ASCENDING)], {"unique": True, "name": "rollout_active"}),
                           ([("state", pymongo.ASCENDING)], {})],
    Collections.AB_QUARANTINE: [([("kind", pymongo.ASCENDING), ("at", pymongo.DESCENDING)], {})],
    Collections.AUTOML_JOBS: [([("status", pymongo.ASCENDING), ("created_at", pymongo.ASCENDING)], {}),
                              ([("owner", pymongo.ASCENDING), ("slot", pymongo.ASCENDING)],
                               {"unique": True, "name": "owner_slot",
                                "partialFilterExpression": {"slot": {"$exists": True}}})],
}


def mongo_reason(exc: Exception) -> str:
    """Why a pymongo call failed, in one clause (pymongo appends its topology description)."""
    return str(exc).split(" (configured timeouts")[0].split(", Timeout:")[0].strip() or type(exc).__name__


class DocumentStore(PerProcess):
    """A thin adapter over one MongoClient (which pools connections itself)."""

    name = "mongodb"

    def __init__(self, url: str, database: str, timeout_s: float = 2.0) -> None:
        self.url = url
        ms = int(timeout_s * 1000)
        self.client: pymongo.MongoClient = pymongo.MongoClient(
            url, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, tz_aware=True, appname="nimbus"
        )
        self.db: Database = self.client[database]

    @classmethod
    def cache_key(cls, settings: Settings) -> tuple[str, str]:
        return (settings.mongo_url, settings.mongo_db)

    @classmethod
    def from_settings(cls, settings: Settings) -> DocumentStore:
        return cls(settings.mongo_url, settings.mongo_db, settings.store_timeout_s)

    def collection(self, name: str) -> Collection:
        return self.db[name]

    def insert_new(self, name: str, docs: list[dict[str, Any]]) -> tuple[int, int]:
        """Insert ``docs`` into collection ``name``, skipping those whose ``_id`` is already there
        (a retried write); returns (inserted, skipped as duplicates). Any other write error raises."""
        skipped = self.insert_skipping(name, docs)
        return len(docs) - len(skipped), len(skipped)

    def insert_skipping(self, name: str, docs: list[dict[str, Any]]) -> list[int]:
        """One unordered bulk insert of ``docs`` (acknowledged by the server, ``w=1``); returns the indexes of
        the documents skipped because their ``_id`` is already there. Any other write error raises."""
        if not docs:
            return []
        try:
            self.db[name].insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != 11000 for e in errors):
                raise
            return sorted(e["index"] for e in errors)
        return []

    def ping(self) -> None:
        try:
            self.client.admin.command("ping")
        except PyMongoError as exc:
            raise StoreUnavailable(self.name, redact(self.url), mongo_reason(exc)) from exc

    def ensure_indexes(self) -> None:
        """Create every declared index (idempotent)."""
        self.ping()
        for name, indexes in INDEXES.items():
            for keys, options in indexes:
                self.db[name].create_index(keys, **options)

    def health(self) -> Health:
        def probe() -> dict[str, str]:
            self.ping()
            info = self.client.server_info()
            return {"version": str(info.get("version", "?"))}

        return timed_health(self.name, self.url, probe)
