"""The ``recommend`` function's app: GET /recommendations/{user_id}, and its own health.

The hot route returns pre-serialised JSON (orjson) instead of letting FastAPI validate a
response model: the model below documents the answer in OpenAPI, and skipping its
validation saves a good share of the request's CPU.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Literal
from urllib.parse import parse_qsl

from fastapi import APIRouter, FastAPI, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from nimbus.api import observe
from nimbus.api.auth import OptionalCaller
from nimbus.api.common import Once, create_app
from nimbus.config import Settings, get_settings
from nimbus.errors import InvalidInput
from nimbus.experiments.exposures import ExposureTracker, RunningExperiments
from nimbus.ids import ID_CHARS, ID_PATTERN, RequestSigner, is_id
from nimbus.monitoring.traffic import FunctionTraffic
from nimbus.recommend.bundle import MODEL_NAME
from nimbus.recommend.live import LiveModels
from nimbus.recommend.serving import FeatureSampler, Recommender
from nimbus.stores.redis.experiments import ExperimentStore
from nimbus.stores.redis.features import FeatureStore
from nimbus.stores.redis.live import LiveModelStore

ALLOWED_QUERY = frozenset({"k", "category"})
K_MIN, K_MAX, USER_MAX, CATEGORY_MAX = 1, 100, 128, 64
PREFIX = "/recommendations/"
ROUTE = PREFIX + "{user_id}"  # the route template, as the metrics label it


class RecommendedItem(BaseModel):
    item_id: str = Field(examples=["i1605"])
    score: float = Field(examples=[0.4187], description="Ranker probability of a click or purchase (0 for popular/fallback).")
    category: str = Field(examples=["c7"])


class RecommendationsPublic(BaseModel):
    request_id: str = Field(examples=["9c1f0e7d2b6a4c3e5f708192.5b0d6a5e8f0e4c0c9b8f1d2a3c4e5f60"],
                            description="Signed by the server for this user; send it back with the clicks and "
                                        "purchases on this answer (POST /events).")
    user_id: str = Field(examples=["u42"])
    items: list[RecommendedItem]
    model_version: str | None = Field(examples=["3"], description="Registry version of the ranker that answered.")
    model_alias: str = Field(examples=["champion"])
    feature_version: str | None = Field(examples=["20261126T053000-1a2b3c"])
    strategy: Literal["personalized", "popular", "fallback"] = Field(
        description="personalized; popular for a user with no history; fallback when Redis is unreachable.")
    degraded: bool = Field(description="True when the answer came from the in-process fallback.")
    experiment: str | None = Field(default=None, examples=["exp-3f2a9c1b7d"],
                                   description="The running A/B experiment that chose the model, if any.")
    variant: str | None = Field(default=None, examples=["treatment"], description="This user's variant in it.")


class RecommenderHealth(BaseModel):
    status: Literal["ok", "degraded", "not_ready"]
    models: dict[str, str] = Field(examples=[{"champion": "3"}], description="Live alias -> registry version.")
    feature_version: str | None
    redis: Literal["ok", "unreachable"]
    swaps: int = Field(description="How many times this process swapped in a new model or feature version.")
    last_error: str | None = Field(description="Why the last load failed (the previous state kept serving); "
                                               "the reason itself only for a read key.")


class RecommendService:
    """The per-process serving objects, built on first use (a cold start imports nothing heavy)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.traffic: FunctionTraffic | None = None  # set by the app: counts degraded answers
        self._recommender: Once[Recommender] = Once(self._build)

    def _build(self) -> Recommender:
        models = LiveModelStore.for_settings(self.settings)
        live = LiveModels(FeatureStore.for_settings(self.settings), models)
        live.start()
        # The request path's own pool, with a short timeout: a slow Redis degrades, never stalls.
        fast = FeatureStore(self.settings.redis_url, self.settings.request_timeout_s)
        recommender = Recommender(fast, live, RequestSigner.for_settings(self.settings))
        experiment_store = ExperimentStore.for_settings(self.settings)
        experiments = RunningExperiments(experiment_store)
        experiments.start()
        recommender.assigner = experiments
        recommender.listeners.append(ExposureTracker(experiment_store, self.settings))
        recommender.listeners.append(FeatureSampler(models, MODEL_NAME, self.settings.drift_sample_rate))
        if self.traffic is not None:
            recommender.listeners.append(self.traffic.count_degraded)
        recommender.listeners.append(observe.note_served)  # model, degraded, experiment on the request's log line
        return recommender

    @property
    def recommender(self) -> Recommender:
        return self._recommender.get()

    def close(self) -> None:
        """Stop the background threads (the app's shutdown; a Lambda just freezes them)."""
        if (recommender := self._recommender.built) is not None:
            recommender.live.stop()
            getattr(recommender.assigner, "stop", lambda: None)()
            for listener in recommender.listeners:
                getattr(listener, "stop", lambda: None)()


def fast_params(user_id: str, query: bytes) -> tuple[int, str | None] | None:
    """(k, category) when a request is plainly valid, else None (FastAPI then answers it).

    Mirrors the route's declared constraints; a test checks that both agree.
    """
    if not is_id(user_id):  # the id character set (no "/", no ":"), 1..USER_MAX long
        return None
    k, category = 10, None
    seen = set()
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name in seen or name not in ALLOWED_QUERY:
            return None
        seen.add(name)
        if name == "k":
            if not value.isascii() or not value.isdigit() or not K_MIN <= int(value) <= K_MAX:
                return None
            k = int(value)
        elif not 1 <= len(value) <= CATEGORY_MAX:
            return None
        else:
            category = value
    return k, category


class FastPath:
    """Serves valid ``GET /recommendations/{user_id}`` straight from ASGI, before FastAPI.

    FastAPI's routing and parameter machinery cost about a third of this route's CPU
    (measured in-process: ~115 of ~330 us). Only plainly valid requests are taken here;
    anything else — a bad ``k``, an unknown parameter or category, a body — goes on to the
    FastAPI route, which stays the documented contract and the one place that words errors.
    """

    def __init__(self, app: ASGIApp, service: RecommendService, traffic: FunctionTraffic) -> None:
        self.app, self.service, self.traffic = app, service, traffic

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"].startswith(PREFIX):
            start = time.perf_counter()
            scope[observe.ROUTE_KEY] = ROUTE  # the request log's route template (FastAPI's router is skipped)
            params = fast_params(scope["path"][len(PREFIX):], scope["query_string"])
            if params is not None and not any(n in (b"content-length", b"transfer-encoding")
                                              for n, _ in scope["headers"]):
                try:
                    served = await self.service.recommender.recommend_batched(scope["path"][len(PREFIX):], *params)
                    body = served.to_json()
                except InvalidInput:
                    pass  # e.g. an unknown category: FastAPI words the 400
                except BaseException:
                    self.traffic.record(ROUTE, "GET", 500, time.perf_counter() - start)
                    raise
                else:
                    await send({"type": "http.response.start", "status": 200,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
                    # Counted here: the metrics middleware sits inside this one.
                    self.traffic.record(ROUTE, "GET", 200, time.perf_counter() - start)
                    return
        await self.app(scope, receive, send)


def build_router(service: RecommendService) -> APIRouter:
    router = APIRouter(tags=["recommendations"])

    @router.get(
        "/recommendations/{user_id}",
        response_model=RecommendationsPublic,
        responses={400: {"description": "Unknown query parameter or category."},
                   422: {"description": "A parameter is out of range (k is 1..100) or the user id is outside "
                                        "the id character set."}},
    )
    async def recommendations(
        request: Request,
        user_id: Annotated[str, Path(min_length=1, max_length=USER_MAX, pattern=ID_PATTERN, examples=["u42"],
                                     description=f"1-{USER_MAX} of {ID_CHARS}.")],
        k: Annotated[int, Query(ge=K_MIN, le=K_MAX, description="How many items.")] = 10,
        category: Annotated[str | None, Query(min_length=1, max_length=CATEGORY_MAX, description="Only this category.",
                                              examples=["c7"])] = None,
    ) -> Response:
        """Top-k items for a user: personalised, popular for a new user, fallback when degraded."""
        unknown = request.query_params.keys() - ALLOWED_QUERY
        if unknown:
            raise HTTPException(400, f"unknown query parameter(s): {', '.join(sorted(unknown))}; "
                                     f"allowed: {', '.join(sorted(ALLOWED_QUERY))}")
        served = service.recommender.recommend(user_id, k, category)
        return Response(served.to_json(), media_type="application/json")

    def health(caller: OptionalCaller) -> RecommenderHealth:
        live = service.recommender.live
        state = live.state
        redis_ok = service.recommender.breaker.allow()
        ready = state.items is not None and bool(state.models)
        return RecommenderHealth(
            status="not_ready" if not ready else "ok" if redis_ok and live.last_error is None else "degraded",
            models={alias: bundle.version for alias, bundle in state.models.items()},
            feature_version=state.items.version if state.items else None,
            redis="ok" if redis_ok else "unreachable", swaps=live.swaps,
            # why a load failed names internal addresses: only for a read key
            last_error=live.last_error if live.last_error is None or (caller and caller.allows("read"))
            else "the last load failed (a read key shows why)",
        )

    for path in ("/health", "/recommend/health"):
        router.add_api_route(path, health, methods=["GET"], response_model=RecommenderHealth,
                             summary="What this process serves: model versions, feature version, Redis state.")
    return router


def create_recommend_app(settings: Settings | None = None, fast_path: bool = True) -> FastAPI:
    service = RecommendService(settings or get_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = create_app("Nimbus recommendations", "Real-time product recommendations.", max_body_bytes=16 * 1024,
                     lifespan=lifespan, function="recommend", settings=service.settings,
                     mongo=False)  # Redis only: no pymongo at cold start
    app.state.service = service
    service.traffic = app.state.traffic
    app.include_router(build_router(app.state.service))
    if fast_path:
        app.add_middleware(FastPath, service=app.state.service, traffic=app.state.traffic)
    return app
