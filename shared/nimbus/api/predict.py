"""The ``predict`` function's app: POST /predict/{model} answers with any registry model.

The body is one record (a JSON object of the model's signature columns) or a list of up to
``predict_max_records`` of them; each is checked against the version's MLflow signature (a missing,
extra or mistyped column is a 422 naming the record and column). The model is chosen by
``?alias=`` (default ``champion``) or ``?version=``; it is loaded on first use and then followed:
an alias moved through governance is loaded, warmed and swapped in without a failed request
(:mod:`nimbus.serving.live`). The answer is serialised with orjson, unvalidated: the response model
below documents it in OpenAPI.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, FastAPI, Header, Path, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nimbus.api import observe
from nimbus.api.auth import AUTH_ERRORS, ReadKey
from nimbus.api.common import Once, create_app
from nimbus.apikeys import grants
from nimbus.config import Settings, get_settings
from nimbus.errors import InvalidInput, NimbusError, Unprocessable
from nimbus.ids import current_request_id
from nimbus.monitoring.traffic import ModelRollup, rollup_for
from nimbus.security import keyring
from nimbus.serving import hooks as _hooks  # noqa: F401 - registers the hook: an alias move is announced
from nimbus.serving.live import RegistryModels
from nimbus.serving.rollout import CHAMPION, RolloutRoutes, Route, Router
from nimbus.serving.samples import PredictionSampler
from nimbus.stores.redis.live import LiveModelStore

log = logging.getLogger("nimbus.api.predict")

MODEL = r"^[A-Za-z0-9_.\-]{1,128}$"  # the route's patterns, which the fast path checks too
AT = r"^[A-Za-z0-9_.\-]{1,64}$"
VERSION = r"^\d{1,9}$"
EXAMPLE_RECORD = {f"f{j}": round(0.1 * (j - 10), 1) for j in range(20)}


class Prediction(BaseModel):
    label: Any = Field(default=None, examples=[1], description="Classifiers: the most probable class.")
    probabilities: dict[str, float] | None = Field(
        default=None, examples=[{"0": 0.27, "1": 0.73}], description="Classifiers: each class's probability.")
    value: Any = Field(default=None, examples=[12.7], description="Regressors and pyfunc models: the prediction "
                                                                  "(a pyfunc model's own output row).")


class RolloutAnswer(BaseModel):
    id: str = Field(examples=["ro-20261207T201500-a1b2c3"], description="The canary rollout routing this model.")
    role: Literal["canary", "champion"] = Field(description="Who answered: the candidate (canary) or the champion "
                                                            "(also when the candidate failed and the champion stood in).")
    shadow: bool = Field(description="Shadow mode: the candidate scored the request too, its answer unused.")


class PredictionsPublic(BaseModel):
    model: str = Field(examples=["churn-lr"])
    version: str = Field(examples=["3"], description="The registry version that answered.")
    alias: str | None = Field(examples=["champion"], description="The alias asked for; null when ?version= was.")
    request_id: str | None = Field(examples=["c0a8012e5f3b4a7d9e1f2a3b4c5d6e7f"])
    kind: Literal["classifier", "regressor", "pyfunc"]
    form: Literal["folded-linear", "onnx", "sklearn", "pyfunc"] = Field(
        description="How it was served: scikit-learn linear models folded into weights, AutoML winners by "
                    "their checked ONNX export, other scikit-learn models by the estimator, any other "
                    "MLflow flavour through mlflow.pyfunc.")
    classes: list[Any] | None = Field(default=None, examples=[[0, 1]], description="Classifiers: the labels.")
    predictions: list[Prediction] = Field(description="One per record, in the order sent.")
    rollout: RolloutAnswer | None = Field(default=None, description="Set while a canary rollout of the model "
                                                                    "routes the champion's requests.")


class HeldModel(BaseModel):
    model: str
    at: str = Field(description="The alias or version asked for.")
    version: str
    kind: str
    form: str


class PredictHealth(BaseModel):
    status: Literal["ok", "degraded"]
    models: list[HeldModel] = Field(description="What this process has loaded (loaded on first request).")
    swaps: int = Field(description="How many times this process swapped its set of loaded models.")
    last_error: str | None = Field(description="Why the last background load failed (the old version kept serving).")


BODY_DOC: dict[str, Any] = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"oneOf": [{"type": "object", "description": "One record: the model's signature columns."},
                         {"type": "array", "items": {"type": "object"}, "description": "Up to the limit."}]},
    "examples": {
        "one record": {"summary": "one record of churn-lr's 20 features", "value": EXAMPLE_RECORD},
        "records": {"summary": "two records", "value": [EXAMPLE_RECORD, {**EXAMPLE_RECORD, "f0": 2.5}]},
    }}}}}


class PredictService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.traffic: Any = None  # set by the app: the fast path counts its own answers
        self._models: Once[RegistryModels] = Once(self._build)
        self._routes: Once[RolloutRoutes] = Once(self._build_routes)
        # served records kept for drift (buffered)
        self.sampler = PredictionSampler(LiveModelStore.for_settings(settings), settings.predict_sample_rate)
        self.router = Router(settings, self.sampler)  # how a running rollout's share is answered, and counted
        self.served = rollup_for(settings, ModelRollup)  # each model's requests, errors, latency, for the dashboard

    def _build(self) -> RegistryModels:
        models = RegistryModels(self.settings)
        models.start()
        return models

    def _build_routes(self) -> RolloutRoutes:
        routes = RolloutRoutes(self.settings)
        routes.start()
        return routes

    @property
    def models(self) -> RegistryModels:
        return self._models.get()

    @property
    def routes(self) -> RolloutRoutes:
        return self._routes.get()

    def preload(self) -> None:
        """Load ``predict_preload``'s models now (the app's startup; a failure is logged, never fatal)."""
        self.routes  # noqa: B018 - the running rollouts read now, off the event loop
        for ref in filter(None, (r.strip() for r in self.settings.predict_preload.split(","))):
            name, _, at = ref.partition("@")
            try:
                self.models.get(name, at or "champion")
            except Exception as exc:  # noqa: BLE001 - the first request for it will say why
                self.models.log.warning("preload of %s failed: %s", ref, exc)

    def close(self) -> None:
        if (models := self._models.built) is not None:
            models.stop()
        if (routes := self._routes.built) is not None:
            routes.stop()
        self.router.close()
        self.sampler.close()

    def answer(self, model: str, alias: str | None, version: str | None, body: bytes, key: str | None = None,
               inline: bool = False) -> bytes:
        """:meth:`_answer`, counted under the model: answered, or failed on (refused requests are not counted)."""
        start = time.perf_counter()
        try:
            answer = self._answer(model, alias, version, body, key, inline)
        except (NimbusError, LookupError):
            raise  # a 4xx, or the slow path answers it (and counts it)
        except Exception:
            self.served.add(model, (time.perf_counter() - start) * 1000.0, True)
            raise
        self.served.add(model, (time.perf_counter() - start) * 1000.0, False)
        return answer

    def _answer(self, model: str, alias: str | None, version: str | None, body: bytes, key: str | None = None,
                inline: bool = False) -> bytes:
        """The JSON answer for ``body`` (raises NotFound, Conflict, Unprocessable). ``inline`` (the fast
        path, on the event loop): only models already loaded in a scikit-learn form, else LookupError."""
        at = version or alias or "champion"
        records = records_of(body)
        get = self.models.loaded if inline else self.models.get
        served = get(model, at)
        route = None
        if version is None and at == CHAMPION:  # only the champion's traffic is shared with a candidate
            routes = self._routes.built if inline else self.routes
            if routes is None:
                raise LookupError("rollouts not read yet")
            route = routes.state.get(model)
        if route is None:
            predictions = served.predict(records, self.limit)
            self.sampler.add(model, served.version, records, predictions)
            return self.shape(model, None if version else at, served, predictions)
        served, predictions, role = self.router.answer(route, served, records, key or current_request_id.get() or "",
                                                       get, self.limit)
        return self.shape(model, CHAMPION, served, predictions, route, role)

    @property
    def limit(self) -> int:
        return self.settings.predict_max_records

    @staticmethod
    def shape(model: str, alias: str | None, served: Any, predictions: list[dict[str, Any]],
              route: Route | None = None, role: str = CHAMPION) -> bytes:
        return orjson.dumps({"model": model, "version": served.version, "alias": alias,
                             "request_id": current_request_id.get(), "kind": served.kind, "form": served.form,
                             "classes": list(served.classes) if served.classes else None,
                             "predictions": predictions,
                             "rollout": None if route is None else {"id": route.id, "role": role,
                                                                   "shadow": route.shadow}},
                            option=orjson.OPT_SERIALIZE_NUMPY)


def records_of(body: bytes) -> list[Any]:
    if not body:
        raise Unprocessable([{"loc": ["body"], "type": "missing", "msg": "no body: send a record or a list"}])
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Unprocessable([{"loc": ["body"], "type": "json_invalid", "msg": f"not JSON: {exc}"}]) from None
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list):
        return data
    raise Unprocessable([{"loc": ["body"], "type": "model_type",
                          "msg": "expected a record (JSON object) or a list of records"}])


PREFIX = "/predict/"
ROUTE = PREFIX + "{model}"
_MODEL, _AT, _VERSION = re.compile(MODEL), re.compile(AT), re.compile(VERSION)


def fast_query(query: bytes) -> tuple[str | None, str | None] | None:
    """(alias, version) of a plainly valid query string, else None (FastAPI then answers it)."""
    found: dict[str, str] = {}
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name in found or name not in ("alias", "version") or not (_AT if name == "alias" else _VERSION).match(value):
            return None
        found[name] = value
    return None if len(found) > 1 else (found.get("alias"), found.get("version"))


class FastPath:
    """Serves plainly valid ``POST /predict/{model}`` calls with a read key straight from ASGI, before FastAPI.

    FastAPI's routing, dependencies and parameter checks cost most of this route's CPU (~500 of ~570 us
    measured in-process for a folded linear model). Taken here: a model name and query FastAPI would
    accept, a key the route's own check (``nimbus.api.auth``, same settings) accepts with the ``read``
    scope, a sized body within the limit, a model that answers. Anything else — no key, a bad query,
    a 404, a 422, a pyfunc model — goes on to the FastAPI route (the body replayed), which stays the
    documented contract and the one place that words errors."""

    def __init__(self, app: ASGIApp, service: PredictService, fastapi: FastAPI, max_body: int) -> None:
        self.app, self.service, self.fastapi, self.max_body = app, service, fastapi, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        scope[observe.ROUTE_KEY] = ROUTE
        model = scope["path"][len(PREFIX):]
        query = fast_query(scope["query_string"]) if _MODEL.match(model) else None
        headers = dict(scope["headers"])
        size = headers.get(b"content-length", b"")
        if query is None or not size.isdigit() or int(size) > self.max_body or not self._allowed(headers):
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:  # a first load or someone else's code (LookupError): the route runs it off the event loop
            answer = self.service.answer(model, *query, body, key=_routing_key(headers), inline=True)
        except (NimbusError, LookupError):
            await self.app(scope, _replay(body, receive), send)
            return
        except BaseException:
            self.service.traffic.record(ROUTE, "POST", 500, time.perf_counter() - start)
            raise
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})
        self.service.traffic.record(ROUTE, "POST", 200, time.perf_counter() - start)  # the metrics sit inside

    def _allowed(self, headers: dict[bytes, bytes]) -> bool:
        key = headers.get(b"x-api-key")
        if not key:
            return False
        settings = self.fastapi.dependency_overrides.get(get_settings, get_settings)()
        found = keyring(settings).identify(key)
        return found is not None and grants(found.scopes, "read")


def _routing_key(headers: dict[bytes, bytes]) -> str | None:
    key = headers.get(b"x-routing-key")
    return key.decode("latin-1")[:256] if key else None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def build_router(service: PredictService) -> APIRouter:
    router = APIRouter(prefix="/predict", tags=["predict"], responses=AUTH_ERRORS)
    limit = service.settings.predict_max_records

    @router.post(
        "/{model}", response_model=PredictionsPublic, openapi_extra=BODY_DOC,
        responses={400: {"description": "Both ?alias= and ?version= were given, or an unknown query parameter."},
                   404: {"description": "No such model, alias or version."},
                   409: {"description": "The version cannot be served: no audited promotion vouches for it, it has "
                                        "no signature, or it fails on its own input example."},
                   422: {"description": f"A record lacks a column, has one the model does not take, or a value "
                                        f"of the wrong type (each named); or more than {limit} records."}},
    )
    async def predict(
        request: Request, _: ReadKey,
        model: Annotated[str, Path(pattern=MODEL, examples=["churn-lr"])],
        alias: Annotated[str | None, Query(pattern=AT, description="Default champion.")] = None,
        version: Annotated[str | None, Query(pattern=VERSION)] = None,
        x_routing_key: Annotated[str | None, Header(max_length=256, description=(
            "During a canary rollout, who the request is for (a user or account id): one key always gets the "
            "same version. Default: the request id (each request routed on its own)."))] = None,
    ) -> Response:
        """Predictions of a registry model for one record or a list of them."""
        unknown = request.query_params.keys() - {"alias", "version"}
        if unknown:
            raise InvalidInput(f"unknown query parameter(s): {', '.join(sorted(unknown))}; allowed: alias, version")
        if alias is not None and version is not None:
            raise InvalidInput("alias, version: give one of them, not both")
        body = await request.body()
        # off the event loop: a first load, a pyfunc model's own code, a candidate being loaded
        answer = await run_in_threadpool(service.answer, model, alias, version, body, x_routing_key)
        return Response(answer, media_type="application/json")

    @router.get("/health", response_model=PredictHealth)
    def health(_: ReadKey) -> PredictHealth:
        """What this process serves: each loaded model's version and form, and its last load error."""
        models = service.models
        return PredictHealth(status="ok" if models.last_error is None else "degraded",
                             models=[HeldModel(**m) for m in models.held()], swaps=models.swaps,
                             last_error=models.last_error)

    return router


def create_predict_app(settings: Settings | None = None, fast_path: bool = True) -> FastAPI:
    service = PredictService(settings or get_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(service.preload)
        yield
        service.close()

    max_body = 4 << 20
    app = create_app("Nimbus predict", "Predictions of any registry model, checked against its signature.",
                     max_body_bytes=max_body, lifespan=lifespan, function="predict", settings=service.settings)
    app.state.service = service
    service.traffic = app.state.traffic
    app.include_router(build_router(service))
    if fast_path:
        app.add_middleware(FastPath, service=service, fastapi=app, max_body=max_body)
    return app
