"""Call a handler the way AWS Lambda's Python runtime does (like ``sls invoke local``).

The module is imported by the dotted path Lambda uses (``functions.health.handler``)
with the project root on ``sys.path``, once per process: later calls are warm, as on
Lambda. Each call gets a Lambda-like context and the function's timeout from
serverless.yml; a handler that raises gives Lambda's error shape, never a traceback.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from nimbus.errors import NimbusError
from nimbus.local.serverless import FunctionSpec, Project

log = logging.getLogger("nimbus.invoke")

Handler = Callable[[Any, Any], Any]


@dataclass
class LambdaContext:
    """The attributes and method of AWS Lambda's Python context object."""

    function_name: str
    memory_limit_in_mb: int
    timeout_s: int
    region: str = "us-east-1"
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_s
        self.invoked_function_arn = f"arn:aws:lambda:{self.region}:000000000000:function:{self.function_name}"
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex
        self.identity = None
        self.client_context = None

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass(frozen=True)
class InvokeResult:
    ok: bool
    payload: Any  # the handler's return value, or Lambda's {"errorMessage", "errorType", ...}
    duration_ms: float
    request_id: str


_import_lock = threading.Lock()


def load_handler(project: Project, fn: FunctionSpec) -> Handler:
    """Import the handler module (once per process) and return the handler callable."""
    with _import_lock:
        root = str(project.root)
        if root not in sys.path:
            sys.path.insert(0, root)
        try:
            module = importlib.import_module(fn.module_path)
        except ModuleNotFoundError as exc:
            raise NimbusError(f"function {fn.name}: cannot import {fn.module_path}: {exc}") from exc
    handler = getattr(module, fn.attribute, None)
    if not callable(handler):
        raise NimbusError(f"function {fn.name}: {fn.module_path} has no callable {fn.attribute!r}")
    return handler


@dataclass
class Invocation:
    """One call of a handler, submitted to the invoker's pool: wait for it with :meth:`Invoker.wait`."""

    function: FunctionSpec
    context: LambdaContext
    future: Future
    started: float = field(default_factory=time.perf_counter)

    @property
    def running(self) -> bool:
        """Queued or still running (a handler past its timeout may run on: see :class:`Invoker`)."""
        return not self.future.done()


class Invoker:
    """Runs handlers in a bounded pool of worker threads, each with its own event loop, under the
    function's ``timeout`` from serverless.yml.

    A handler past its timeout gets Lambda's ``Task timed out`` answer and its result is discarded
    (logged when it does finish). Unlike Lambda, which ends the sandbox, the handler's thread runs
    on until the handler returns: Python cannot stop a thread. It keeps its worker while it runs, so
    at most ``max_workers`` handlers run at once; a call that found no free worker within its
    timeout is cancelled before it starts.
    """

    def __init__(self, project: Project, max_workers: int = 16) -> None:
        self.project = project
        self.max_workers = max_workers
        self._loops: list[asyncio.AbstractEventLoop] = []
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="lambda",
                                        initializer=self._thread_with_loop)

    def _thread_with_loop(self) -> None:
        # Mangum (and Lambda's runtime) expect an event loop in the invoking thread.
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loops.append(loop)

    def submit(self, name: str, event: Any) -> Invocation:
        """Start ``name``'s handler on ``event`` in the pool; returns at once."""
        fn = self.project.function(name)
        handler = load_handler(self.project, fn)
        context = LambdaContext(fn.name, fn.memory_mb, fn.timeout_s, self.project.region)
        return Invocation(fn, context, self._pool.submit(handler, event, context))

    def wait(self, invocation: Invocation) -> InvokeResult:
        """The invocation's result, or Lambda's timeout error once the function's timeout has passed."""
        fn, context, future = invocation.function, invocation.context, invocation.future
        try:
            payload = future.result(timeout=max(0.0, context.get_remaining_time_in_millis() / 1000))
            ok = True
        except FutureTimeout:
            ok, payload = False, {"errorType": "TimeoutError",
                                  "errorMessage": f"Task timed out after {fn.timeout_s:.2f} seconds"}
            if future.cancel():
                log.warning("function %s (%s): no free worker of %d within its %d s timeout; not run",
                            fn.name, context.aws_request_id, self.max_workers, fn.timeout_s)
            else:
                log.warning("function %s (%s): timed out after %d s; its result will be discarded "
                            "(its thread runs on until the handler returns)", fn.name, context.aws_request_id,
                            fn.timeout_s)
                future.add_done_callback(lambda _: log.warning(
                    "function %s (%s): finished %.1f s after it started, past its %d s timeout; result discarded",
                    fn.name, context.aws_request_id, time.perf_counter() - invocation.started, fn.timeout_s))
        except Exception as exc:  # noqa: BLE001 - the handler's own failure, reported as Lambda reports it
            # The trace is in the payload (as Lambda returns it) and at DEBUG; callers say what to show.
            log.debug("function %s failed: %s", fn.name, "".join(traceback.format_exception(exc)))
            ok, payload = False, {"errorType": type(exc).__name__, "errorMessage": str(exc),
                                  "stackTrace": traceback.format_tb(exc.__traceback__)}
        return InvokeResult(ok, payload, (time.perf_counter() - invocation.started) * 1000, context.aws_request_id)

    async def wait_async(self, invocation: Invocation) -> InvokeResult:
        """:meth:`wait` for an event loop: holds no thread while the handler runs."""
        waiter = asyncio.wrap_future(invocation.future)
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())  # reported by wait(), not by asyncio
        await asyncio.wait([waiter], timeout=invocation.context.get_remaining_time_in_millis() / 1000)
        return self.wait(invocation)  # done, or past its timeout: answers at once

    def invoke(self, name: str, event: Any) -> InvokeResult:
        """Call ``name``'s handler on ``event`` and wait for it (at most its timeout)."""
        return self.wait(self.submit(name, event))

    def close(self) -> None:
        """Stop the workers and close their loops (a handler still past its timeout keeps its own)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        for loop in self._loops:
            if not loop.is_running():
                loop.close()
        self._loops.clear()
