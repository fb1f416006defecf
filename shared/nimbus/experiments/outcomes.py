"""Outcomes: clicks and purchases from POST /events, joined to the answer they follow.

An event that carries ``request_id`` counts for that answer; one without counts for the
user's latest answer. Either way it counts only when all of these hold:

* the request id is one this server signed for the event's user (:mod:`nimbus.ids`) —
  checked before any Redis key is built from it (POST /events refuses a batch with a
  forged one, 422; this module checks again for any other caller);
* the server's record of that answer exists (it expires after the attribution window)
  and names the same user;
* the clicked/bought item is one of the items that answer listed;
* the event happened within ``attribution_window_s`` after the answer was served.

Each answer counts at most one click and one purchase (CTR and conversion are proportions
of answers), so a retried delivery or a second click on the same list changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from nimbus.config import Settings
from nimbus.ids import RequestSigner
from nimbus.recommend.realtime import event_ts
from nimbus.stores.redis.experiments import ExperimentStore
from nimbus.stores.redis.keys import OutcomeRow

KIND = {"click": "c", "purchase": "p"}


class Interaction(Protocol):
    event_id: str
    user_id: str
    item_id: str
    type: str
    request_id: str | None
    timestamp: datetime | None


def attributable(served: dict | None, user_id: str, item_id: str, ts: float, window_s: float) -> bool:
    """Whether an outcome of ``user_id`` on ``item_id`` at ``ts`` counts for the answer ``served``."""
    if not served or served.get("user_id") != user_id:
        return False  # expired, unknown, or somebody else's answer
    served_ts = served.get("ts")
    if not isinstance(served_ts, int | float) or not math.isfinite(ts):
        return False
    return item_id in (served.get("items") or ()) and 0 <= ts - served_ts <= window_s


def record_outcomes(store: ExperimentStore, settings: Settings, events: Sequence[Interaction], now: float,
                    signer: RequestSigner | None = None) -> int:
    """Attribute the clicks and purchases among ``events``; returns how many counted (new).
    ``now`` is the server's time (the time of an event without a timestamp)."""
    signer = signer or RequestSigner.for_settings(settings)
    relevant = [e for e in events if e.type in KIND]
    if not relevant:
        return 0
    by_request = [e for e in relevant if e.request_id and signer.verify(e.request_id, e.user_id)]
    by_user = [e for e in relevant if not e.request_id]
    latest = store.last_requests([e.user_id for e in by_user])
    pairs = [(e, e.request_id, "request_id") for e in by_request]
    pairs += [(e, rid, "user") for e, rid in zip(by_user, latest) if rid]
    records = store.served_records([rid for _, rid, _ in pairs])
    window = settings.attribution_window_s
    rows = []
    for (event, rid, joined_by), served in zip(pairs, records):
        ts = event_ts(event, now)
        if attributable(served, event.user_id, event.item_id, ts, window):
            rows.append(OutcomeRow(rid, KIND[event.type], served, event.event_id, ts, joined_by))
    return store.record_outcomes(rows, window, settings.perf_bucket_s, settings.perf_keep_s)
