"""One log line per HTTP request, and the request id that joins it to traces and answers.

:class:`RequestLog` sits outside every middleware of an app but Starlette's error middleware and
the tracing one (so 413s and the recommend fast path are logged too, inside the request's span). For each request it

* takes the request id (:func:`nimbus.ids.request_id_for`): a usable ``X-Request-Id``, else API
  Gateway's ``requestContext.requestId`` (Mangum puts the event in the scope), else a new one;
* makes it the current request id — the recommender signs it into the answer's ``request_id``,
  so the exposure and outcome rows carry it — and binds it to every log line of the request;
* returns it as the ``X-Request-Id`` response header, and puts it on the request's span;
* logs ``request`` with the function, route template, method, status, latency, ids, and what
  the answer noted (:func:`note`: model version and alias, degraded, experiment and variant).

Only those fields: never a header, a query string, a body or a key.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nimbus import logs, tracing
from nimbus.ids import current_request_id, request_id_for

ROUTE_KEY = "nimbus.route"  # a route template set on the scope by a path that skips FastAPI's router
UNMATCHED = "unmatched"
_noted: ContextVar[dict[str, Any] | None] = ContextVar("nimbus_request_fields", default=None)


def note(**fields: Any) -> None:
    """Add fields to the current request's log line (and span); nothing outside a request."""
    noted = _noted.get()
    if noted is not None:
        noted.update(fields)
        if tracing.enabled():  # off: not even the attribute dict (this runs on every answer)
            tracing.set_attributes({f"nimbus.{k}": v for k, v in fields.items()})


def note_served(served: Any) -> None:
    """A recommender listener: the answer's model, degradation and experiment on the request's line."""
    note(model_version=served.model_version, model_alias=served.model_alias, degraded=served.degraded,
         experiment=served.experiment, variant=served.variant)


def _request_id(scope: Scope) -> str:
    header = next((v.decode("latin-1") for n, v in scope["headers"] if n == b"x-request-id"), None)
    event = scope.get("aws.event")
    context = event.get("requestContext") if isinstance(event, dict) else None
    return request_id_for(header, context.get("requestId") if isinstance(context, dict) else None)


class RequestLog:
    def __init__(self, app: ASGIApp, function: str) -> None:
        self.app, self.function = app, function

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = _request_id(scope)
        header = (b"x-request-id", rid.encode())
        noted: dict[str, Any] = {}
        rid_token, noted_token = current_request_id.set(rid), _noted.set(noted)
        bound = logs.bind(request_id=rid)
        if tracing.enabled():
            tracing.set_attributes({"nimbus.request_id": rid, "faas.name": self.function})
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if logs.REQUESTS.isEnabledFor(20):  # INFO
                route = getattr(scope.get("route"), "path", None) or scope.get(ROUTE_KEY) or UNMATCHED
                logs.REQUESTS.info("request", extra={
                    "function": self.function, "route": route, "method": scope["method"], "status": status,
                    "latency_ms": round((time.perf_counter() - start) * 1000, 3), "trace_id": tracing.trace_id(),
                    **noted})
            logs.unbind(bound)
            current_request_id.reset(rid_token)
            _noted.reset(noted_token)


def wrap(app: Any, function: str) -> None:
    """Put :class:`RequestLog` around every middleware of ``app`` (built on its first request) but
    Starlette's outermost ``ServerErrorMiddleware``, which OpenTelemetry's FastAPI instrumentation
    expects to find there; an unhandled error is still logged (status 500)."""
    build = app.build_middleware_stack

    def build_middleware_stack() -> ASGIApp:
        stack = build()
        stack.app = RequestLog(stack.app, function)
        return stack

    app.build_middleware_stack = build_middleware_stack
