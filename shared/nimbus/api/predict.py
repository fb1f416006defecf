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

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, FastAPI, Path, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from nimbus.api.auth import AUTH_ERRORS, ReadKey
from nimbus.api.common import Once, create_app
from nimbus.config import Settings, get_settings
from nimbus.errors import InvalidInput, Unprocessable
from nimbus.ids import current_request_id
from nimbus.serving import hooks as _hooks  # noqa: F401 - registers the hook: an alias move is announced
from nimbus.serving.live import RegistryModels

AT = r"^[A-Za-z0-9_.\-]{1,64}$"
EXAMPLE_RECORD = {f"f{j}": round(0.1 * (j - 10), 1) for j in range(20)}


class Prediction(BaseModel):
    label: Any = Field(default=None, examples=[1], description="Classifiers: the most probable class.")
    probabilities: dict[str, float] | None = Field(
        default=None, examples=[{"0": 0.27, "1": 0.73}], description="Classifiers: each class's probability.")
    value: Any = Field(default=None, examples=[12.7], description="Regressors and pyfunc models: the prediction "
                                                                  "(a pyfunc model's own output row).")


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
        self._models: Once[RegistryModels] = Once(self._build)

    def _build(self) -> RegistryModels:
        models = RegistryModels(self.settings)
        models.start()
        return models

    @property
    def models(self) -> RegistryModels:
        return self._models.get()

    def preload(self) -> None:
        """Load ``predict_preload``'s models now (the app's startup; a failure is logged, never fatal)."""
        for ref in filter(None, (r.strip() for r in self.settings.predict_preload.split(","))):
            name, _, at = ref.partition("@")
            try:
                self.models.get(name, at or "champion")
            except Exception as exc:  # noqa: BLE001 - the first request for it will say why
                self.models.log.warning("preload of %s failed: %s", ref, exc)

    def close(self) -> None:
        if (models := self._models.built) is not None:
            models.stop()


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


def build_router(service: PredictService) -> APIRouter:
    router = APIRouter(prefix="/predict", tags=["predict"], responses=AUTH_ERRORS)
    limit = service.settings.predict_max_records

    @router.post(
        "/{model}", response_model=PredictionsPublic, openapi_extra=BODY_DOC,
        responses={400: {"description": "Both ?alias= and ?version= were given."},
                   404: {"description": "No such model, alias or version."},
                   409: {"description": "The version cannot be served: no audited promotion vouches for it, it has "
                                        "no signature, or it fails on its own input example."},
                   422: {"description": f"A record lacks a column, has one the model does not take, or a value "
                                        f"of the wrong type (each named); or more than {limit} records."}},
    )
    async def predict(
        request: Request, _: ReadKey,
        model: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.\-]{1,128}$", examples=["churn-lr"])],
        alias: Annotated[str | None, Query(pattern=AT, description="Default champion.")] = None,
        version: Annotated[str | None, Query(pattern=r"^\d{1,9}$")] = None,
    ) -> Response:
        """Predictions of a registry model for one record or a list of them."""
        if alias is not None and version is not None:
            raise InvalidInput("alias, version: give one of them, not both")
        at = version or alias or "champion"
        records = records_of(await request.body())
        served = service.models.get(model, at)
        if served.kind == "pyfunc":  # someone else's code: off the event loop
            predictions = await run_in_threadpool(served.predict, records, limit)
        else:
            predictions = served.predict(records, limit)
        answer = {"model": model, "version": served.version, "alias": None if version else at,
                  "request_id": current_request_id.get(), "kind": served.kind, "form": served.form,
                  "classes": list(served.classes) if served.classes else None, "predictions": predictions}
        return Response(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    @router.get("/health", response_model=PredictHealth)
    def health(_: ReadKey) -> PredictHealth:
        """What this process serves: each loaded model's version and form, and its last load error."""
        models = service.models
        return PredictHealth(status="ok" if models.last_error is None else "degraded",
                             models=[HeldModel(**m) for m in models.held()], swaps=models.swaps,
                             last_error=models.last_error)

    return router


def create_predict_app(settings: Settings | None = None) -> FastAPI:
    service = PredictService(settings or get_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(service.preload)
        yield
        service.close()

    app = create_app("Nimbus predict", "Predictions of any registry model, checked against its signature.",
                     max_body_bytes=4 << 20, lifespan=lifespan, function="predict", settings=service.settings)
    app.state.service = service
    app.include_router(build_router(service))
    return app
