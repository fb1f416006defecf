"""Real-time features: interactions applied to Redis the moment they arrive.

A batch of events is one Redis round trip (a Lua script), atomic per event and
idempotent on ``event_id``: a retried delivery changes nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from nimbus.recommend.ranking import EVENT_WEIGHT, RECENT_N, ItemTable
from nimbus.stores.redis.features import FeatureStore, RealtimeEvent


class InteractionEvent(BaseModel):
    """One user interaction."""

    event_id: str = Field(min_length=1, max_length=128, examples=["e-2026-11-26-000001"],
                          description="Unique per event; a repeated id is ignored (idempotent).")
    user_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@\-]+$", examples=["u42"])
    item_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@\-]+$", examples=["i1605"])
    type: Literal["view", "click", "purchase"] = Field(examples=["click"])
    timestamp: datetime | None = Field(default=None, description="When it happened (default: on arrival).")
    request_id: str | None = Field(default=None, max_length=64,
                                   description="The recommendation request it answers, when known.")


class EventBatch(BaseModel):
    events: list[InteractionEvent] = Field(min_length=1, max_length=500)


class IngestResult(BaseModel):
    accepted: int = Field(description="Events applied now.")
    duplicates: int = Field(description="Events whose id was seen before (ignored).")
    unknown_items: int = Field(description="Events whose item is not in the current catalogue (no category count).")


def ingest(store: FeatureStore, items: ItemTable | None, events: list[InteractionEvent]) -> IngestResult:
    now = datetime.now(UTC).timestamp()
    rows, unknown = [], 0
    for event in events:
        category = ""
        if items is not None and (n := items.index.get(event.item_id)) is not None:
            category = str(items.categories[items.item_category[n]])
        else:
            unknown += 1
        ts = event.timestamp.timestamp() if event.timestamp else now
        rows.append(RealtimeEvent(event.event_id, event.user_id, event.item_id, category,
                                  EVENT_WEIGHT[event.type], ts))
    applied = store.apply_events(rows, RECENT_N)
    return IngestResult(accepted=applied, duplicates=len(rows) - applied, unknown_items=unknown)
