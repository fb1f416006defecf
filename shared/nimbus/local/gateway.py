"""The local gateway: what API Gateway, EventBridge and S3->SQS do for the functions on AWS.

* every ``httpApi`` route in serverless.yml becomes a route here; a request is turned
  into an API Gateway v2 (payload 2.0) event and handed to the function's handler;
* every ``schedule`` fires the function with an EventBridge "Scheduled Event";
* the drop-folder queue is polled: each S3 notification is handed to the functions whose
  ``s3`` trigger matches, as the S3 event Lambda would get. A message is deleted only
  after every handler succeeded; a failure comes back (with back-off) and after the
  queue's maxReceiveCount goes to the dead-letter queue, as on AWS.

The three run concurrently: HTTP requests on uvicorn's event loop, the scheduler and the
drop-folder poller in a thread each, and every handler in the invoker's bounded pool of
workers (:class:`nimbus.local.invoke.Invoker`). Each schedule fires on its own: a 900 s
batch does not delay the 1-minute rollup, an HTTP answer or a drop-folder file. A fire of a
schedule whose previous run is still going is skipped and logged (the local gateway must
not pile up runs of one schedule). A handler past its function's ``timeout`` has its result
discarded and logged (HTTP answers 504, as API Gateway does); its thread cannot be stopped
(Python has no way to kill a thread) and runs on, holding its worker, until it returns.
Drop-folder messages are handled one at a time, each deleted only once handled.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from croniter import croniter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nimbus import tracing
from nimbus.config import Settings
from nimbus.errors import ConfigError, EventError, NimbusError
from nimbus.events import ObjectsCreated, parse
from nimbus.ids import request_id_for
from nimbus.local.invoke import Invocation, Invoker
from nimbus.local.serverless import FunctionSpec, Project, Schedule
from nimbus.stores.objects import QueueStore

log = logging.getLogger("nimbus.gateway")

MAX_BODY_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


# ---- HTTP: request -> API Gateway v2 event -> handler -> response --------------------------
def starlette_path(path: str) -> str:
    """API Gateway path syntax to Starlette's: {proxy+} matches the rest of the path."""
    return re.sub(r"\{(\w+)\+\}", r"{\1:path}", path)


def http_event(request: Request, body: bytes, route_key: str, request_id: str | None = None) -> dict[str, Any]:
    """The API Gateway HTTP API (payload format 2.0) event for ``request``; ``request_id`` is its
    ``requestContext.requestId`` and ``X-Request-Id`` header (the caller's, when usable: see nimbus.ids)."""
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    request_id = request_id or request_id_for(headers.get("x-request-id"))
    headers["x-request-id"] = request_id
    query: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        query[name] = f"{query[name]},{value}" if name in query else value
    try:
        text, is_b64 = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, is_b64 = base64.b64encode(body).decode(), True
    now = datetime.now(UTC)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": request.url.path,
        "rawQueryString": request.url.query,
        "headers": headers,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "local",
            "domainName": request.url.hostname or "localhost",
            "domainPrefix": "local",
            "http": {
                "method": request.method,
                "path": request.url.path,
                "protocol": f"HTTP/{request.scope.get('http_version', '1.1')}",
                "sourceIp": request.client.host if request.client else "127.0.0.1",
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": route_key,
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": is_b64,
    }
    if query:
        event["queryStringParameters"] = query
    if request.path_params:
        event["pathParameters"] = {k: str(v) for k, v in request.path_params.items()}
    if "cookie" in headers:
        event["cookies"] = [c.strip() for c in headers["cookie"].split(";")]
    if body:
        event["body"] = text
    return event


def http_response(payload: Any) -> Response:
    """Turn a handler's return value into a response, as API Gateway does for payload 2.0."""
    if not isinstance(payload, dict) or "statusCode" not in payload:
        return JSONResponse(payload)  # 2.0 lets a handler return plain JSON
    body = payload.get("body") or ""
    raw = base64.b64decode(body) if payload.get("isBase64Encoded") else body.encode()
    response = Response(raw, status_code=int(payload["statusCode"]))
    for name, value in (payload.get("headers") or {}).items():
        response.headers[name] = str(value)
    for name, values in (payload.get("multiValueHeaders") or {}).items():
        for value in values:
            response.headers.append(name, str(value))
    for cookie in payload.get("cookies") or []:
        response.headers.append("set-cookie", cookie)
    return response


# ---- schedules -------------------------------------------------------------------------------
_RATE = re.compile(r"^rate\((\d+)\s+(minute|minutes|hour|hours|day|days)\)$")
_UNIT_S = {"minute": 60, "hour": 3600, "day": 86400}
_AWS_DOW = {str(i): str(i - 1) for i in range(1, 8)}  # AWS: 1=SUN..7=SAT; cron: 0=SUN..6=SAT


def cron_to_croniter(expression: str) -> str:
    """AWS cron (min hour day-of-month month day-of-week year) to a five-field cron."""
    fields = expression.split()
    if len(fields) != 6:
        raise ConfigError(f"cron({expression}): AWS cron has 6 fields (min hour dom month dow year)")
    minute, hour, dom, month, dow, _year = fields
    if any(c in f for f in (dom, dow) for c in "LW#"):
        raise ConfigError(f"cron({expression}): L, W and # are not supported by the local scheduler")
    dom = "*" if dom == "?" else dom
    dow = "*" if dow == "?" else re.sub(r"\b[1-7]\b", lambda m: _AWS_DOW[m.group(0)], dow)
    five = f"{minute} {hour} {dom} {month} {dow}"
    if not croniter.is_valid(five):
        raise ConfigError(f"cron({expression}) is not a valid cron expression")
    return five


def next_fire(schedule: Schedule, after: float) -> float:
    """The next time (epoch seconds) ``schedule`` fires after ``after``."""
    expr = schedule.expression.strip()
    if match := _RATE.match(expr):
        period = int(match.group(1)) * _UNIT_S[match.group(2).rstrip("s")]
        if period <= 0:
            raise ConfigError(f"{expr}: the rate must be positive")
        return after + period
    if expr.startswith("cron(") and expr.endswith(")"):
        return croniter(cron_to_croniter(expr[5:-1]), after).get_next(float)
    raise ConfigError(f"schedule {expr!r}: expected rate(N minutes|hours|days) or cron(...)")


def scheduled_event(fn: FunctionSpec, schedule: Schedule, region: str, index: int) -> dict[str, Any]:
    rule = schedule.name or f"nimbus-{fn.name}-schedule-{index}"
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "000000000000",
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [f"arn:aws:events:{region}:000000000000:rule/{rule}"],
        "detail": {},
    }


# ---- the gateway -----------------------------------------------------------------------------
@dataclass
class GatewayOptions:
    schedules: bool = True
    watch: bool = True
    poll_wait_s: int = 1


class Gateway:
    """Routes HTTP, schedules and drop-folder notifications to the handlers of one project."""

    def __init__(self, project: Project, settings: Settings, options: GatewayOptions | None = None) -> None:
        self.project = project
        self.settings = settings
        self.options = options or GatewayOptions()
        self.invoker = Invoker(project)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.fired: list[tuple[str, str]] = []  # (function, trigger) for status and tests
        self.skipped: list[tuple[str, str]] = []  # (function, schedule) fires skipped: the last run still going
        # Validate every schedule now: a bad expression fails `serve` at start, not at 2 a.m.
        self._schedules = [
            (fn, sched, i) for fn in project.functions.values()
            for i, sched in enumerate(fn.schedules) if sched.enabled
        ]
        for _, sched, _ in self._schedules:
            next_fire(sched, time.time())
        self._running: dict[int, Invocation] = {}  # schedule -> its latest run
        self._waiters: ThreadPoolExecutor | None = None  # one per schedule: waits for a run, logs its end
        self.app = Starlette(routes=self._routes(), lifespan=self._lifespan)

    def _routes(self) -> list[Route]:
        routes = []
        for fn in self.project.functions.values():
            for route in fn.http:
                methods = ALL_METHODS if route.method in ("*", "ANY") else [route.method]
                route_key = f"{'ANY' if route.method == '*' else route.method} {route.path}"
                routes.append(Route(starlette_path(route.path), self._endpoint(fn, route_key), methods=methods))
        return routes

    def _endpoint(self, fn: FunctionSpec, route_key: str):
        async def endpoint(request: Request) -> Response:
            length = int(request.headers.get("content-length") or 0)
            if length > MAX_BODY_BYTES:
                return JSONResponse({"message": "Request Entity Too Large"}, status_code=413)
            body = await request.body()
            if len(body) > MAX_BODY_BYTES:
                return JSONResponse({"message": "Request Entity Too Large"}, status_code=413)
            request_id = request_id_for(request.headers.get("x-request-id"))
            event = http_event(request, body, route_key, request_id)
            # API Gateway's part of the trace; its traceparent reaches the function in the event's headers.
            with tracing.span(f"gateway {route_key}", {"nimbus.request_id": request_id, "faas.invoked_name": fn.name}):
                tracing.inject(event["headers"])
                invocation = await asyncio.to_thread(self.invoker.submit, fn.name, event)  # a first call imports
                result = await self.invoker.wait_async(invocation)  # no thread held while the handler runs
            if not result.ok:
                log.error("%s %s -> %s failed: %s: %s", request.method, request.url.path, fn.name,
                          result.payload.get("errorType"), result.payload.get("errorMessage"),
                          extra={"request_id": request_id, "function": fn.name})
                timed_out = result.payload.get("errorType") == "TimeoutError"
                # API Gateway's own answers: 503/504 say nothing of the function's internals.
                return JSONResponse({"message": "Service Unavailable" if timed_out else "Internal Server Error"},
                                    status_code=504 if timed_out else 500, headers={"X-Request-Id": request_id})
            response = http_response(result.payload)
            response.headers.setdefault("x-request-id", request_id)
            return response

        return endpoint

    # -- background loops --
    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.start_background()
        try:
            yield
        finally:
            self.stop()

    def start_background(self) -> None:
        self._stop.clear()
        if self.options.schedules and self._schedules:
            # At most one run per schedule is waited on (an overlapping fire is skipped): one waiter each.
            self._waiters = ThreadPoolExecutor(max_workers=len(self._schedules), thread_name_prefix="gateway-schedule")
            self._spawn("schedules", self._schedule_loop)
        if self.options.watch and any(fn.s3 for fn in self.project.functions.values()):
            self._spawn("drop-folder", self._watch_loop)

    def _spawn(self, name: str, target) -> None:
        thread = threading.Thread(target=target, name=f"gateway-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        if self._waiters is not None:
            self._waiters.shutdown(wait=False, cancel_futures=True)
            self._waiters = None
        self.invoker.close()

    def _schedule_loop(self) -> None:
        due = {i: next_fire(s, time.time()) for i, (_, s, _) in enumerate(self._schedules)}
        while not self._stop.is_set():
            now = time.time()
            for i in range(len(self._schedules)):
                if due[i] <= now:
                    due[i] = next_fire(self._schedules[i][1], now)
                    self.fire(i)
            self._stop.wait(max(0.05, min(due.values()) - time.time()))

    def fire(self, i: int) -> Invocation | None:
        """Start schedule ``i``'s function (in the pool, without waiting); None if its last run still goes."""
        fn, sched, index = self._schedules[i]
        previous = self._running.get(i)
        if previous is not None and previous.running:
            self.skipped.append((fn.name, sched.expression))
            log.warning("schedule %s -> %s: skipped, the run started %.0f s ago (%s) is still going",
                        sched.expression, fn.name, time.perf_counter() - previous.started,
                        previous.context.aws_request_id)
            return None
        try:
            invocation = self._running[i] = self.invoker.submit(
                fn.name, scheduled_event(fn, sched, self.project.region, index))
        except NimbusError as exc:  # e.g. the handler does not import: the other schedules go on
            log.error("schedule %s -> %s: %s", sched.expression, fn.name, exc)
            return None
        self.fired.append((fn.name, sched.expression))
        if self._waiters is not None:
            self._waiters.submit(self._report, sched, invocation)
        return invocation

    def _report(self, sched: Schedule, invocation: Invocation) -> None:
        result = self.invoker.wait(invocation)
        log.info("schedule %s -> %s: %s", sched.expression, invocation.function.name,
                 "ok" if result.ok else result.payload)

    def _watch_loop(self) -> None:
        queue = QueueStore(self.settings)
        while not self._stop.is_set():
            try:
                messages = queue.receive(wait_s=self.options.poll_wait_s)
            except NimbusError as exc:
                log.warning("drop folder: %s (retrying)", exc)
                self._stop.wait(2)
                continue
            for message in messages:
                if self.deliver(message["Body"]):
                    queue.delete(message["ReceiptHandle"])
                else:
                    receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
                    queue.retry_later(message["ReceiptHandle"], min(2 ** receives, 300))

    def deliver(self, body: str) -> bool:
        """Hand one S3 notification (an SQS message body) to every matching function."""
        try:
            notification = json.loads(body)
            records = notification.get("Records", []) if isinstance(notification, dict) else []
            parsed = parse(notification) if records else ObjectsCreated(objects=[])
        except (json.JSONDecodeError, EventError) as exc:
            log.error("drop folder: dropping a message that is not an S3 notification: %s", exc)
            return True  # a poison message: retrying cannot help
        ok = True
        for record, obj in zip(records, getattr(parsed, "objects", [])):
            for fn in self.project.functions.values():
                if any(t.matches(obj.bucket, obj.key, record.get("eventName", "")) for t in fn.s3):
                    result = self.invoker.invoke(fn.name, {"Records": [record]})
                    self.fired.append((fn.name, f"s3://{obj.bucket}/{obj.key}"))
                    ok = ok and result.ok
                    if not result.ok:
                        log.error("drop folder -> %s failed: %s", fn.name, result.payload.get("errorMessage"))
        return ok


@contextmanager
def serving(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run an ASGI ``app`` (a gateway's, or any function's) with uvicorn in a thread; yields its URL."""
    import uvicorn

    from nimbus.local.stack import free_port

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="gateway-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise NimbusError(f"could not serve on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
