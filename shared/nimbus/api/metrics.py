"""Request metrics for every HTTP function: an ASGI middleware and the ``/metrics`` route.

The middleware times each request and hands (route template, method, status, seconds)
to :class:`nimbus.monitoring.traffic.FunctionTraffic`; the route template (e.g.
``/recommendations/{user_id}``), never the raw path, keeps label sets bounded. A path
no route matched is labelled ``unmatched``.
"""

from __future__ import annotations

import time

from fastapi import Depends, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nimbus.api import exporter
from nimbus.api.auth import AUTH_ERRORS, require
from nimbus.config import Settings, get_settings
from nimbus.monitoring.traffic import FunctionTraffic

UNMATCHED = "unmatched"


class RequestMetrics:
    """Counts and times every HTTP request of the app it wraps (outermost, so 413s count too)."""

    def __init__(self, app: ASGIApp, traffic: FunctionTraffic) -> None:
        self.app, self.traffic = app, traffic

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except BaseException:
            status = 500
            raise
        finally:
            route = scope.get("route")  # set by FastAPI's router on the (shared) scope
            self.traffic.record(getattr(route, "path", UNMATCHED), scope["method"], status,
                                time.perf_counter() - start)


def instrument(app: FastAPI, function: str, settings: Settings | None = None) -> FunctionTraffic:
    """Add the metrics middleware and ``GET /metrics`` + ``GET /{function}/metrics`` to ``app``."""
    resolved = settings or get_settings()
    traffic = FunctionTraffic(function, resolved)
    app.state.traffic = traffic
    exporter.register(resolved)  # live versions, drift, AutoML queue, batch counts: read from the stores

    def metrics() -> Response:
        """Prometheus metrics: HTTP traffic, live model versions, drift PSI, AutoML queue, batch records."""
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    for path in ("/metrics", f"/{function}/metrics"):
        app.add_api_route(path, metrics, methods=["GET"], tags=["monitoring"], summary=metrics.__doc__,
                          dependencies=[Depends(require("read"))],
                          response_class=Response, responses={**AUTH_ERRORS, 200: {
                              "description": "Prometheus text exposition format.",
                              "content": {CONTENT_TYPE_LATEST: {"example": (
                                  'nimbus_http_requests_total{function="recommend",method="GET",'
                                  'route="/recommendations/{user_id}",status="200"} 1042.0\n'
                                  'nimbus_model_live_version{alias="champion",model="nimbus-recommender"} 3.0\n'
                                  'nimbus_automl_jobs{status="queued"} 2.0\n')}}}})
    app.add_middleware(RequestMetrics, traffic=traffic)
    return traffic
