"""Real-time features: interactions applied to Redis the moment they arrive.

A batch of events is one Redis round trip (a Lua script), atomic per event and
idempotent on (``user_id``, ``event_id``): a retried delivery changes nothing, and one
user's event ids never shadow another's.

What a batch must be (else 422 naming the field, and nothing of the batch is applied):
every id in the id character set (:data:`nimbus.ids.ID_PATTERN`, no ``:``); a timestamp,
when given, at most ``event_max_age_s`` old and ``event_max_skew_s`` ahead of the server's
clock; a ``request_id``, when given, one the server signed for that user (:mod:`nimbus.ids`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from nimbus.config import Settings
from nimbus.ids import ID_CHARS, ID_PATTERN, RequestSigner
from nimbus.recommend.ranking import EVENT_WEIGHT, RECENT_N, ItemTable
from nimbus.stores.redis.features import FeatureStore, RealtimeEvent


class InteractionEvent(BaseModel):
    """One user interaction."""

    event_id: str = Field(min_length=1, max_length=128, pattern=ID_PATTERN, examples=["e-2026-11-26-000001"],
                          description=f"Unique per event of this user; a repeated id is ignored (idempotent). "
                                      f"1-128 of {ID_CHARS}, as every id here.")
    user_id: str = Field(min_length=1, max_length=128, pattern=ID_PATTERN, examples=["u42"])
    item_id: str = Field(min_length=1, max_length=128, pattern=ID_PATTERN, examples=["i1605"])
    type: Literal["view", "click", "purchase"] = Field(examples=["click"])
    timestamp: datetime | None = Field(default=None, description="When it happened (default: on arrival); at most "
                                       "NIMBUS_EVENT_MAX_AGE_S old and NIMBUS_EVENT_MAX_SKEW_S ahead.")
    request_id: str | None = Field(default=None, max_length=128, pattern=ID_PATTERN,
                                   description="The request_id of the recommendation answer it follows, as served "
                                               "(signed for this user).")


class EventBatch(BaseModel):
    events: list[InteractionEvent] = Field(min_length=1, max_length=500)


class IngestResult(BaseModel):
    accepted: int = Field(description="Events applied now.")
    duplicates: int = Field(description="Events whose id was seen before (ignored).")
    unknown_items: int = Field(description="Events whose item is not in the current catalogue (no category count).")


def event_ts(event: InteractionEvent, now: float) -> float:
    """The event's time, epoch seconds (its arrival when it has none; UTC when it names no zone)."""
    if event.timestamp is None:
        return now
    ts = event.timestamp
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()


def problems(events: Sequence[InteractionEvent], settings: Settings, signer: RequestSigner,
             now: float) -> list[dict[str, Any]]:
    """What the model alone cannot check, as validation errors (``loc`` names the field under
    ``body.events.{i}``): timestamps outside [now - event_max_age_s, now + event_max_skew_s],
    and request ids this server did not sign for the event's user. Empty: the batch is fine."""
    errors: list[dict[str, Any]] = []
    oldest, newest = now - settings.event_max_age_s, now + settings.event_max_skew_s
    for i, event in enumerate(events):
        loc = ("body", "events", i)
        if event.timestamp is not None and not oldest <= event_ts(event, now) <= newest:
            errors.append({"type": "timestamp_window", "loc": (*loc, "timestamp"), "input": event.timestamp.isoformat(),
                           "msg": f"timestamp must be at most {settings.event_max_age_s} s before and "
                                  f"{settings.event_max_skew_s} s after the server's time"})
        if event.request_id is not None and not signer.verify(event.request_id, event.user_id):
            errors.append({"type": "request_id_signature", "loc": (*loc, "request_id"), "input": event.request_id,
                           "msg": "request_id is not one this server issued to this user_id"})
    return errors


def ingest(store: FeatureStore, items: ItemTable | None, events: list[InteractionEvent], now: float) -> IngestResult:
    rows, unknown = [], 0
    for event in events:
        category = ""
        if items is not None and (n := items.index.get(event.item_id)) is not None:
            category = str(items.categories[items.item_category[n]])
        else:
            unknown += 1
        ts = event_ts(event, now)
        rows.append(RealtimeEvent(event.event_id, event.user_id, event.item_id, category,
                                  EVENT_WEIGHT[event.type], ts))
    applied = store.apply_events(rows, RECENT_N)
    return IngestResult(accepted=applied, duplicates=len(rows) - applied, unknown_items=unknown)
