"""What every Nimbus HTTP app shares: settings as a dependency, a body-size limit, errors as
clear JSON answers (never a stack trace), and the Lambda handler that serves it (:func:`lambda_handler`)."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Annotated, Any, Generic, TypeVar

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nimbus import __version__, buffers, logs, tracing
from nimbus.config import Settings, get_settings
from nimbus.errors import ConfigError, Conflict, InvalidInput, NimbusError, NotFound, StoreUnavailable, Unprocessable

log = logging.getLogger("nimbus.api")
SettingsDep = Annotated[Settings, Depends(get_settings)]
T = TypeVar("T")


class Once(Generic[T]):
    """A per-process object built on first use (so a cold start imports and connects nothing
    it does not need), exactly once even when the first requests arrive together."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._build, self._lock = build, threading.Lock()
        self._value: T | None = None

    def get(self) -> T:
        value = self._value
        if value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._build()
                value = self._value
        return value

    @property
    def built(self) -> T | None:
        return self._value


# The error taxonomy (nimbus.errors) as HTTP, in one place; the first match wins.
HTTP_STATUS: tuple[tuple[type[NimbusError], int], ...] = (
    (Unprocessable, 422), (InvalidInput, 400), (NotFound, 404), (Conflict, 409), (StoreUnavailable, 503))


def status_for(exc: NimbusError) -> int:
    return next((status for kind, status in HTTP_STATUS if isinstance(exc, kind)), 500)  # ConfigError...: ours


def public_message(exc: NimbusError) -> str:
    """What a caller is told. A backend's address and its error text stay in the log: they describe
    the inside of the deployment, not the caller's request."""
    if isinstance(exc, StoreUnavailable):
        log.warning("%s", exc)
        return f"{exc.store} is unavailable; {exc.consequence or 'try again later'}"
    if status_for(exc) >= 500:
        log.error("%s: %s", type(exc).__name__, exc)
        return "internal error"
    return str(exc)


def start(build: Callable[[], T]) -> T:
    """Build a function's app at import (cold start); a ConfigError (e.g. the local key off the local
    stack) ends the process with one clear line on stderr instead of a traceback."""
    try:
        return build()
    except ConfigError as exc:
        print(f"nimbus: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def lambda_handler(app: ASGIApp) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """The Lambda handler of an HTTP function: Mangum (API Gateway event <-> ASGI, no lifespan:
    Lambda gives no shutdown hook), and every buffered exposure, drift sample and traffic count
    written in the invoking thread before the handler returns, also when the app raised — Lambda
    freezes any thread between invocations (see :mod:`nimbus.buffers`). Under uvicorn the app is
    served directly and the buffers keep their background threads."""
    from mangum import Mangum

    handler = buffers.flushed(Mangum(app, lifespan="off"))
    if not tracing.enabled():
        return handler

    def traced(event: dict[str, Any], context: Any) -> dict[str, Any]:
        try:
            return handler(event, context)
        finally:
            tracing.flush()  # spans exported before Lambda freezes the exporter's thread

    return traced


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, whether sized or chunked."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._refuse(send, int(value))
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge(seen)
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge as exc:
            await self._refuse(send, exc.size)

    async def _refuse(self, send: Send, size: int) -> None:
        body = orjson.dumps({"detail": f"request body too large: {size} bytes; the limit is {self.limit}"})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        self.size = size


def create_app(title: str, description: str, max_body_bytes: int = 1 << 20, *, function: str | None = None,
               settings: Settings | None = None, mongo: bool = True, **kwargs: Any) -> FastAPI:
    """A FastAPI app whose Nimbus errors become JSON answers, whose bodies are bounded and
    whose requests are counted and timed (``/metrics``; ``function`` names it there).

    ``mongo``: the app's code reads MongoDB, so a pymongo connection failure is answered as the
    store's 503. An app that never touches MongoDB (recommend) passes False and its cold start
    does not import pymongo."""
    from nimbus.api import observe
    from nimbus.api.metrics import instrument
    from nimbus.security import check_deployable

    resolved = settings or get_settings()
    check_deployable(resolved)  # off the local stack: never on the local key or a default secret
    logs.configure(resolved)  # once per process: JSON lines (or text) at NIMBUS_LOG_LEVEL
    tracing.configure()  # once per process, from OTEL_*; off: nothing set up
    app = FastAPI(title=title, description=description, version=__version__, **kwargs)
    name = function or title.split()[-1].lower()
    observe.wrap(app, name)  # a log line and the request id per request, outside every middleware
    tracing.instrument_app(app)  # outside that: the request's span (only when tracing is on)
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    if resolved.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=resolved.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["X-API-Key", "Authorization", "Content-Type", "X-Request-Id", "traceparent"],
                           expose_headers=["X-Request-Id"], max_age=600)
    instrument(app, name, settings)
    if settings is not None:  # an app made for given settings answers with them, not the environment's
        app.dependency_overrides[get_settings] = lambda: settings

    @app.exception_handler(NimbusError)
    async def nimbus_error(request: Request, exc: NimbusError) -> JSONResponse:
        if isinstance(exc, Unprocessable):  # FastAPI's own 422 shape: a list naming each field
            return JSONResponse({"detail": exc.errors}, status_code=422)
        return JSONResponse({"detail": public_message(exc)}, status_code=status_for(exc))

    if mongo:
        import pymongo.errors

        @app.exception_handler(pymongo.errors.ConnectionFailure)
        async def mongo_down(request: Request, exc: pymongo.errors.ConnectionFailure) -> JSONResponse:
            # Domain code reads MongoDB collections directly; an outage met there is still the store's 503.
            return await nimbus_error(request, StoreUnavailable("mongodb", "mongodb", str(exc)[:300]))

    return app
