"""The append-only audit trail: who did what, when, to which input and model versions, and how it ended.

Records are only ever inserted (never updated or deleted by Nimbus) in MongoDB's
``audit`` collection; ``history`` reads them back newest first.
"""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from typing import Any

from nimbus.config import Settings
from nimbus.stores.documents import Collections, DocumentStore


def actor(settings: Settings) -> str:
    """Who is acting: ``settings.actor`` when set (functions set it from the caller), else the OS user."""
    if settings.actor:
        return settings.actor
    try:
        return getpass.getuser()
    except OSError:
        return "unknown"


def record(settings: Settings, action: str, subject: str, outcome: str, *, who: str | None = None,
           input: dict[str, Any] | None = None, models: dict[str, str] | None = None,
           details: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = {
        "at": datetime.now(UTC), "actor": who or actor(settings), "action": action, "subject": subject,
        "outcome": outcome, "input": input or {}, "models": models or {}, "details": details or {},
    }
    DocumentStore.for_settings(settings).collection(Collections.AUDIT).insert_one(doc)
    doc.pop("_id", None)
    return doc


def history(settings: Settings, subject: str | None = None, action: str | None = None,
            limit: int | None = 50) -> list[dict]:
    """Records, newest first (``limit`` None: all of them)."""
    query: dict[str, Any] = {}
    if subject:
        query["subject"] = subject
    if action:
        query["action"] = action
    cursor = DocumentStore.for_settings(settings).collection(Collections.AUDIT).find(query, {"_id": 0})
    cursor = cursor.sort("at", -1)
    return list(cursor if limit is None else cursor.limit(limit))
