"""The ``events`` function's app: POST /events applies user interactions to real-time features."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError

from nimbus.api.auth import AUTH_ERRORS, EventsKey
from nimbus.api.common import Once, create_app
from nimbus.config import Settings, get_settings
from nimbus.experiments.outcomes import record_outcomes
from nimbus.ids import RequestSigner
from nimbus.recommend.live import LiveModels
from nimbus.recommend.realtime import EventBatch, IngestResult, ingest, problems
from nimbus.stores.redis.experiments import ExperimentStore
from nimbus.stores.redis.features import FeatureStore
from nimbus.stores.redis.live import LiveModelStore


class EventsService:
    """Per-process: the current item table (for each event's category), loaded on first use."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings, self.clock = settings, clock
        self.signer = RequestSigner.for_settings(settings)
        self._catalogue: Once[LiveModels] = Once(self._build)

    def _build(self) -> LiveModels:
        live = LiveModels(FeatureStore.for_settings(self.settings), LiveModelStore.for_settings(self.settings),
                          with_models=False)
        live.start()
        return live

    @property
    def catalogue(self) -> LiveModels:
        return self._catalogue.get()

    def close(self) -> None:
        if (live := self._catalogue.built) is not None:
            live.stop()


def create_events_app(settings: Settings | None = None, clock: Callable[[], float] = time.time) -> FastAPI:
    """``clock``: the server's time, epoch seconds (tests pass their own)."""
    service = EventsService(settings or get_settings(), clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = create_app("Nimbus events", "User interactions in, real-time features out.", max_body_bytes=256 * 1024,
                     lifespan=lifespan, function="events", settings=settings)
    router = APIRouter(tags=["events"])

    @router.post("/events", response_model=IngestResult, responses={
        **AUTH_ERRORS, 413: {"description": "Body over 256 KiB."},
        422: {"description": "An id outside the id character set, a timestamp outside the accepted window, or a "
                             "request_id this server did not sign for that user: nothing of the batch is applied."}})
    def post_events(batch: EventBatch, _: EventsKey) -> IngestResult:
        """Apply up to 500 interactions at once (a key with the ``events`` scope); idempotent on (user_id, event_id). Clicks and
        purchases also count as A/B and performance outcomes of the answer they follow (by its
        signed request_id, else the user's latest answer), when that answer listed the item and
        was served within the attribution window before the event."""
        now = service.clock()
        if errors := problems(batch.events, service.settings, service.signer, now):
            raise RequestValidationError(errors)
        result = ingest(FeatureStore.for_settings(service.settings), service.catalogue.state.items, batch.events, now)
        record_outcomes(ExperimentStore.for_settings(service.settings), service.settings, batch.events, now,
                        service.signer)
        return result

    app.include_router(router)
    return app
