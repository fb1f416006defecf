"""Outcomes: clicks and purchases from POST /events, joined to the answer they follow.

An event that carries ``request_id`` counts for that answer (if it is still within the
attribution window — the answer's record expires after it). An event without one counts
for the user's latest answer when it was served at most ``attribution_window_s`` before
the event and listed the clicked/bought item. Each answer counts at most one click and
one purchase (CTR and conversion are proportions of answers), so a retried delivery or a
second click on the same list changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from nimbus.config import Settings
from nimbus.stores.redis.experiments import ExperimentStore
from nimbus.stores.redis.keys import OutcomeRow

KIND = {"click": "c", "purchase": "p"}


class Interaction(Protocol):
    event_id: str
    user_id: str
    item_id: str
    type: str
    request_id: str | None

    @property
    def timestamp(self):
        ...


def record_outcomes(store: ExperimentStore, settings: Settings, events: Sequence[Interaction]) -> int:
    """Attribute the clicks and purchases among ``events``; returns how many counted (new)."""
    relevant = [e for e in events if e.type in KIND]
    if not relevant:
        return 0
    by_request = [e for e in relevant if e.request_id]
    by_user = [e for e in relevant if not e.request_id]
    latest = store.last_requests([e.user_id for e in by_user])
    pairs = [(e, e.request_id, "request_id") for e in by_request]
    pairs += [(e, rid, "user") for e, rid in zip(by_user, latest) if rid]
    records = store.served_records([rid for _, rid, _ in pairs])
    now, window = time.time(), settings.attribution_window_s
    rows = []
    for (event, rid, joined_by), served in zip(pairs, records):
        if served is None or served.get("user_id") != event.user_id:
            continue  # expired, unknown, or somebody else's answer
        ts = event.timestamp.timestamp() if event.timestamp else now
        if joined_by == "user" and (event.item_id not in served["items"] or not 0 <= ts - served["ts"] <= window):
            continue
        rows.append(OutcomeRow(rid, KIND[event.type], served, event.event_id, ts, joined_by))
    return store.record_outcomes(rows, window, settings.perf_bucket_s, settings.perf_keep_s)
