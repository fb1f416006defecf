"""OpenTelemetry traces, configured only by the standard ``OTEL_*`` environment variables.

Tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter other than ``none`` (``otlp``,
``console``), or when ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is
set (OTLP then); ``OTEL_SDK_DISABLED=true`` turns it off. The SDK itself reads the rest
(``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_EXPORTER_OTLP_PROTOCOL``, headers,
sampler...). Off, nothing of the SDK is imported or set up: an app gets no tracing middleware,
:func:`span` is one shared no-op context and :func:`trace_id` answers None — the request path
does no span work at all (``benchmarks/monitoring_overhead.py`` measures both).

On, FastAPI apps (:func:`instrument_app`), Redis, botocore (S3/SQS/SSM), ``requests`` (MLflow,
the Ray Jobs API) and pymongo (:func:`_register_mongo`: a client span per command inside a
trace) are instrumented; W3C ``traceparent`` is the propagator (:func:`inject` puts it in headers,
in a job's environment, or in a queued job's document, whose runner continues the trace with
:func:`attached`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

log = logging.getLogger("nimbus.tracing")

_NO_OP = contextlib.nullcontext()
_lock = threading.Lock()
_provider: Any = None  # the SDK's TracerProvider while tracing is on
_tracer: Any = None
_configured = False
_mongo_listener: Any = None  # registered with pymongo once tracing is first on in this process


def exporter_wanted(env: Mapping[str, str] = os.environ) -> str | None:
    """The span exporter the ``OTEL_*`` variables ask for (``otlp``, ``console``), or None: off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if names:
        wanted = [n for n in names if n != "none"]
        return wanted[0] if wanted else None
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return "otlp"
    return None


def configure(env: Mapping[str, str] = os.environ) -> bool:
    """Set tracing up once per process from the environment; True when it is on."""
    global _configured
    with _lock:
        if _configured:
            return _provider is not None
        _configured = True
        name = exporter_wanted(env)
        if name is None:
            return False
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        if name == "console":
            exporter: Any = ConsoleSpanExporter()
        elif name == "otlp":
            protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
            if protocol.startswith("grpc"):
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            else:  # http/protobuf: the specification's default
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            exporter = OTLPSpanExporter()  # endpoint, headers, timeout: from OTEL_EXPORTER_OTLP_*
        else:
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported here (otlp, console, none); tracing is off", name)
            return False
    use(_new_provider(), BatchSpanProcessor(exporter))
    return True


def _new_provider() -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    return TracerProvider(resource=Resource.create())  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES


def use(provider: Any, processor: Any = None) -> None:
    """Trace into ``provider`` (an SDK TracerProvider) from now on, and instrument the clients:
    what :func:`configure` does, and what a test does with an in-memory exporter."""
    global _provider, _tracer, _configured
    from opentelemetry.instrumentation.botocore import BotocoreInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    if processor is not None:
        provider.add_span_processor(processor)
    with _lock:
        _configured = True
        for instrumentor in (RedisInstrumentor(), BotocoreInstrumentor(), RequestsInstrumentor()):
            if instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.uninstrument()
            instrumentor.instrument(tracer_provider=provider)
        _provider, _tracer = provider, provider.get_tracer("nimbus")
        _register_mongo()


def stop() -> None:
    """Tracing off again (tests): the clients uninstrumented, spans no longer made."""
    global _provider, _tracer
    if _provider is None:
        return
    from opentelemetry.instrumentation.botocore import BotocoreInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    for instrumentor in (RedisInstrumentor(), BotocoreInstrumentor(), RequestsInstrumentor()):
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
    _provider.force_flush()
    _provider = _tracer = None


def _register_mongo() -> None:
    """pymongo's command events as client spans, from now on (clients made after this call: configure
    runs at a process's start, before its stores are built).

    A listener of our own rather than opentelemetry-instrumentation-pymongo: no release of it matches
    the other instrumentations' version here (its 0.66b1 pins opentelemetry-instrumentation==0.66b1,
    the FastAPI one 0.66b2). pymongo has no way to unregister a listener, so it is registered only
    when tracing is first turned on (off, pymongo never calls it) and does nothing once :func:`stop`
    turned tracing off again."""
    global _mongo_listener
    if _mongo_listener is not None:
        return
    from pymongo import monitoring

    _mongo_listener = _mongo_command_tracer(monitoring)
    monitoring.register(_mongo_listener)


def _mongo_command_tracer(monitoring: Any) -> Any:
    """The listener (its class is made here: the module imports neither pymongo nor the SDK while off)."""
    from opentelemetry import trace

    class _MongoCommandTracer(monitoring.CommandListener):
        """One CLIENT span per MongoDB command, as the upstream instrumentation's ``CommandTracer``
        makes it (same attributes), but never the command itself (``db.statement``: values, filters) nor
        a failure's message (it may quote a key's value): the command's name, database and collection,
        the server. Only inside a trace: the runners' lease heartbeats and a worker's poll of the queue
        would otherwise each be a trace of one span every few seconds."""

        def __init__(self) -> None:
            self._spans: dict[Any, Any] = {}  # (request id, connection): pymongo calls back on the op's thread

        def started(self, event: Any) -> None:
            tracer = _tracer
            if tracer is None or not trace.get_current_span().get_span_context().is_valid:
                return
            name = event.command_name
            collection = event.command.get("collection" if name == "getMore" else name)
            attributes: dict[str, Any] = {"db.system": "mongodb", "db.name": event.database_name,
                                          "db.operation": name}
            if isinstance(collection, str):
                attributes["db.mongodb.collection"] = collection
            if event.connection_id is not None:
                host, port = event.connection_id
                attributes["net.peer.name"] = host
                if port is not None:
                    attributes["net.peer.port"] = port
            self._spans[(event.request_id, event.connection_id)] = tracer.start_span(
                f"{name} {collection}" if isinstance(collection, str) else name,
                kind=trace.SpanKind.CLIENT, attributes=attributes)

        def succeeded(self, event: Any) -> None:
            span = self._spans.pop((event.request_id, event.connection_id), None)
            if span is not None:
                span.end()

        def failed(self, event: Any) -> None:
            span = self._spans.pop((event.request_id, event.connection_id), None)
            if span is None:
                return
            code = event.failure.get("codeName") if isinstance(event.failure, Mapping) else None
            span.set_attribute("error.type", str(code or "UnknownError"))
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(code or "the command failed")))
            span.end()

    return _MongoCommandTracer()


def enabled() -> bool:
    return _provider is not None


def instrument_app(app: Any) -> None:
    """Trace a FastAPI app's requests (W3C ``traceparent`` in, a server span each) when tracing is on."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, tracer_provider=_provider, exclude_spans=["receive", "send"])


def span(name: str, attributes: Mapping[str, Any] | None = None) -> contextlib.AbstractContextManager[Any]:
    """A span around a block (a job or one of its steps); the shared no-op context when off."""
    if _tracer is None:
        return _NO_OP
    return _tracer.start_as_current_span(name, attributes={k: v for k, v in (attributes or {}).items()
                                                            if v is not None})


def set_attributes(attributes: Mapping[str, Any]) -> None:
    """Attributes on the current span (None values left out); nothing when off."""
    if _tracer is None:
        return
    from opentelemetry import trace

    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes({k: v for k, v in attributes.items() if v is not None})


def trace_id() -> str | None:
    """The current trace's id (32 hex) for log lines, or None when off or outside a span."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else None


def inject(carrier: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add the current context's ``traceparent`` (and ``tracestate``) to ``carrier``; nothing when off."""
    if _tracer is not None:
        from opentelemetry.propagate import inject as otel_inject

        otel_inject(carrier)
    return carrier


def job_env(env: dict[str, str]) -> dict[str, str]:
    """A submitted job's environment with this process's ``OTEL_*`` settings and the current
    context as ``TRACEPARENT``/``TRACESTATE`` (the environment-variable carrier of the W3C
    context), so the job's spans join the submitter's trace; ``env`` unchanged when tracing is off."""
    if _tracer is None:
        return env
    carrier: dict[str, str] = {}
    inject(carrier)
    return {**env, **{k: v for k, v in os.environ.items() if k.startswith("OTEL_")},
            **{k.upper(): v for k, v in carrier.items()}}


def from_env(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The W3C context a parent process left in ``TRACEPARENT``/``TRACESTATE`` (for :func:`attached`)."""
    return {k.lower(): env[k] for k in ("TRACEPARENT", "TRACESTATE") if env.get(k)}


@contextlib.contextmanager
def attached(carrier: Mapping[str, str]) -> Iterator[None]:
    """Make the context in ``carrier`` (e.g. a job's ``TRACEPARENT``) the parent of spans in the block."""
    if _tracer is None or not any(k.lower() == "traceparent" for k in carrier):
        yield
        return
    from opentelemetry import context
    from opentelemetry.propagate import extract

    token = context.attach(extract({k.lower(): v for k, v in carrier.items()}))
    try:
        yield
    finally:
        context.detach(token)


def flush() -> None:
    """Export what is buffered (before Lambda freezes the process)."""
    if _provider is not None:
        _provider.force_flush()
