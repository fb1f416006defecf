"""Structured logs: one line per request and per job step, the same locally, in containers and on Lambda.

Nimbus code logs with the standard library (``logging.getLogger(...)``); :func:`configure`
renders every record — ours, uvicorn's, boto's — as one JSON object a line (``NIMBUS_LOG_FORMAT=json``,
the default) or readable text (``text``), at ``NIMBUS_LOG_LEVEL``. The renderer is structlog's
``ProcessorFormatter``: structlog is well kept, is the usual choice for this, and its contextvars
carry the request id (and trace id) into every line logged while a request is served, from any
module, without passing them around; python-json-logger would format records but not bind context.
On Lambda the lines go to stderr, which the runtime ships to CloudWatch as they are.

Never logged: headers, query strings, bodies, keys. Fields whose names look like secrets are
dropped by :func:`_redact` whatever a caller passes.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

import orjson
import structlog

from nimbus import tracing
from nimbus.config import Settings

REQUESTS = logging.getLogger("nimbus.requests")
JOBS = logging.getLogger("nimbus.jobs")
_SECRET = re.compile(r"(?i)(api[_-]?key|authorization|password|secret|token|cookie|credential)")
_handler: logging.Handler | None = None


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test runner swaps it; Lambda ships it)."""

    @property
    def stream(self) -> IO[str]:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value: IO[str]) -> None:
        pass


def _redact(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    event.pop("message", None)  # the stdlib's copy of "event", added back by ExtraAdder
    for key in [k for k in event if _SECRET.search(k)]:
        del event[key]
    return event


def _json(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of ``fmt`` (json | text) for any stdlib handler."""
    pre = [structlog.contextvars.merge_contextvars, structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
           structlog.stdlib.ExtraAdder(), structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"), _redact]
    if fmt == "json":
        final: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                            structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer(_json)]
    else:
        final = [structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                 structlog.dev.ConsoleRenderer(colors=False)]
    return structlog.stdlib.ProcessorFormatter(processors=final, foreign_pre_chain=pre)


def configure(settings: Settings, stream: IO[str] | None = None, force: bool = False) -> None:
    """Render logs per the settings, once per process (``force``: again, e.g. into a test's stream)."""
    global _handler
    if _handler is not None and not force:
        return
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    handler = logging.StreamHandler(stream) if stream is not None else _Stderr()
    handler.setFormatter(formatter(settings.log_format))
    handler.setLevel(settings.log_level)
    root.addHandler(handler)
    level = logging.getLevelName(settings.log_level)
    logging.getLogger("nimbus").setLevel(level)
    if root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    _handler = handler


def bind(**fields: Any) -> Any:
    """Fields on every line logged in this context (undo with :func:`unbind`)."""
    return structlog.contextvars.bind_contextvars(**fields)


def unbind(tokens: Any) -> None:
    structlog.contextvars.reset_contextvars(**tokens)


def _key_field(kind: str) -> str:
    return "run_key" if kind == "batch" else "job_id"


def step_progress(kind: str, key: str, name: str, **counts: Any) -> None:
    """A line while a long step runs, saying how far it is (records scored so far, tasks done)."""
    JOBS.info("job step progress", extra={"kind": kind, _key_field(kind): key, "step": name, "status": "running",
                                          "trace_id": tracing.trace_id(), **counts})


@contextlib.contextmanager
def step(kind: str, key: str, name: str, **fields: Any) -> Iterator[dict[str, Any]]:
    """One job step as a span (``{kind}.{name}``) and one log line when it ends: ``kind``'s key
    (``run_key`` of a batch run, ``job_id`` of an AutoML job), the step, its counts and duration.
    The block adds its counts to the dict it is given."""
    counts: dict[str, Any] = {}
    key_field = _key_field(kind)
    start, status = time.perf_counter(), "ok"
    with tracing.span(f"{kind}.{name}", {f"nimbus.{key_field}": key, **{f"nimbus.{k}": v for k, v in fields.items()}}):
        try:
            yield counts
        except BaseException:
            status = "error"
            raise
        finally:
            tracing.set_attributes({f"nimbus.{k}": v for k, v in counts.items() if isinstance(v, int | float | str)})
            JOBS.info("job step", extra={"kind": kind, key_field: key, "step": name, "status": status,
                                         "duration_ms": round((time.perf_counter() - start) * 1000, 1),
                                         "trace_id": tracing.trace_id(), **fields, **counts})
