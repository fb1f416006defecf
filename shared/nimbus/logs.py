"""Structured logs: one line per request and per job step, the same locally, in containers and on Lambda.

Nimbus code logs with the standard library (``logging.getLogger(...)``); :func:`configure`
renders every record — ours, uvicorn's, boto's — as one JSON object a line (``NIMBUS_LOG_FORMAT=json``,
the default) or readable text (``text``), at ``NIMBUS_LOG_LEVEL``. The renderer is structlog's
``ProcessorFormatter``: structlog is well kept and the usual choice for this; python-json-logger
would format records but not bind context. Fields bound with :func:`bind` (the request id) go on
every line logged while a request is served, from any module, without passing them around.

The JSON lines without a traceback — the request line, the hot one — are rendered by
:class:`JSONFormatter` itself, the same object structlog's chain would build (a test holds the
two to the same output), in a fifth of the time; structlog (which imports rich) is imported only
when a traceback or the text format needs it, so a cold start does not pay for it.
On Lambda the lines go to stderr, which the runtime ships to CloudWatch as they are.

Never logged: headers, query strings, bodies, keys. Fields whose names look like secrets are
dropped by :func:`_redact` whatever a caller passes.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import IO, Any

import orjson

from nimbus import tracing
from nimbus.config import Settings

REQUESTS = logging.getLogger("nimbus.requests")
JOBS = logging.getLogger("nimbus.jobs")
_SECRET = re.compile(r"(?i)(api[_-]?key|authorization|password|secret|token|cookie|credential)")
_handler: logging.Handler | None = None
_NOTHING: Mapping[str, Any] = MappingProxyType({})
_bound: ContextVar[Mapping[str, Any]] = ContextVar("nimbus_log_fields", default=_NOTHING)  # replaced, never mutated
# What a plain LogRecord carries (structlog's ExtraAdder copies every other attribute: the extras)
_RECORD_KEYS = frozenset(logging.LogRecord("name", 0, "pathname", 0, "msg", (), None).__dict__)
_UTC = datetime.UTC


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


def _merge_bound(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in _bound.get().items():
        event.setdefault(key, value)
    return event


class JSONFormatter(logging.Formatter):
    """One JSON object a line: structlog's chain (:func:`structlog_formatter`) for records with a
    traceback or stack, and for the rest the same dict built directly — event, bound fields, level,
    logger, extras, ``ts``, secret-looking fields dropped."""

    def __init__(self) -> None:
        super().__init__()
        self._full: logging.Formatter | None = None

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.stack_info:
            if self._full is None:
                self._full = structlog_formatter("json")
            return self._full.format(record)
        event = _merge_bound(None, "", {"event": record.getMessage()})
        event["level"] = record.levelname.lower()
        event["logger"] = record.name
        for key, value in record.__dict__.items():
            if key not in _RECORD_KEYS:
                event[key] = value
        event["ts"] = datetime.datetime.now(tz=_UTC).isoformat().replace("+00:00", "Z")
        return _json(_redact(None, "", event))


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of ``fmt`` (json | text) for any stdlib handler."""
    return JSONFormatter() if fmt == "json" else structlog_formatter(fmt)


def structlog_formatter(fmt: str) -> logging.Formatter:
    """structlog's rendering of ``fmt`` (json | text)."""
    import structlog

    pre = [_merge_bound, structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
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


def bind(**fields: Any) -> Token[Mapping[str, Any]]:
    """Fields on every line logged in this context (undo with :func:`unbind`)."""
    return _bound.set({**_bound.get(), **fields})


def unbind(token: Token[Mapping[str, Any]]) -> None:
    _bound.reset(token)


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
