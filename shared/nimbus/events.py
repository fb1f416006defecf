"""Cloud events in, plain typed requests out.

This module is the only place in Nimbus that knows what an API Gateway, S3, SQS,
EventBridge or CloudEvents payload looks like. Functions call :func:`parse` and work
with an :class:`HttpRequest`, :class:`ObjectsCreated` or :class:`ScheduledTrigger`, so
the same code runs on AWS Lambda, in a container and on a laptop.

Like Mangum's adapter, each source is a small class whose ``infer`` says whether an
event is its own; the first class in :data:`SOURCES` that says yes parses it. Raw shapes
are checked with private pydantic models, so a bad event becomes one ``EventError`` line
that names the source and the field instead of a ``KeyError`` deep inside a handler.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any, ClassVar, Literal, TypeAlias, TypeVar
from urllib.parse import unquote, unquote_plus, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nimbus.errors import EventError

__all__ = [
    "SOURCES",
    "ApiGatewayV2",
    "CloudEvent",
    "EventBridgeS3",
    "EventBridgeSchedule",
    "EventSource",
    "HttpRequest",
    "NimbusEvent",
    "ObjectCreated",
    "ObjectsCreated",
    "S3Notification",
    "ScheduledTrigger",
    "SqsWrappedS3",
    "infer_source",
    "parse",
]

# ---------------------------------------------------------------------------
# Public requests: what handlers see. Frozen, because a request is a fact about
# something that already happened; handlers must not edit it and pass it on.
# ---------------------------------------------------------------------------

ObjectSource: TypeAlias = Literal["aws:s3", "aws:sqs", "aws:events", "cloudevents"]
ScheduleSource: TypeAlias = Literal["aws:events", "cloudevents"]


class HttpRequest(BaseModel):
    """One HTTP call, whichever gateway delivered it."""

    model_config = ConfigDict(frozen=True)

    method: str
    path: str
    raw_query: str = ""
    # Repeated parameters arrive comma-joined (API Gateway's rule); raw_query keeps them apart.
    query: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    path_params: dict[str, str] = Field(default_factory=dict)
    # bytes when the gateway sent the body base64-encoded (binary media), text otherwise.
    body: bytes | str = ""
    request_id: str | None = None
    source_ip: str | None = None
    route_key: str | None = None

    @field_validator("method")
    @classmethod
    def _upper_method(cls, value: str) -> str:
        return value.upper()

    @field_validator("headers", mode="before")
    @classmethod
    def _lower_header_names(cls, value: object) -> object:
        # HTTP header names are case-insensitive; one spelling lets handlers use plain dict lookups.
        if isinstance(value, dict):
            return {str(name).lower(): header for name, header in value.items()}
        return value

    def header(self, name: str, default: str | None = None) -> str | None:
        """The value of header ``name`` in any letter case, else ``default``."""
        return self.headers.get(name.lower(), default)


class ObjectCreated(BaseModel):
    """One new object in a bucket (S3, GCS) or container (Azure Blob Storage)."""

    model_config = ConfigDict(frozen=True)

    bucket: str
    key: str  # already URL-decoded: pass it to the storage API as it is
    size: int | None = None
    etag: str | None = None
    event_time: datetime | None = None
    source: ObjectSource

    @field_validator("etag")
    @classmethod
    def _unquote_etag(cls, value: str | None) -> str | None:
        # HTTP ETags are quoted ("abc"), notifications usually are not: keep one form.
        return value.strip('"') if value is not None else None


class ObjectsCreated(BaseModel):
    """Every object one event announces: an S3 notification or an SQS batch may carry several."""

    model_config = ConfigDict(frozen=True)

    objects: list[ObjectCreated]
    # The W3C context the event carried (CloudEvents' distributed-tracing extension): the run continues it.
    trace: dict[str, str] = Field(default_factory=dict)


class ScheduledTrigger(BaseModel):
    """A timer fired: an EventBridge rule, a Cloud Scheduler job or any CloudEvents schedule."""

    model_config = ConfigDict(frozen=True)

    rule: str  # the rule or job name, not its ARN/resource path, so it matches serverless.yml
    time: datetime
    source: ScheduleSource
    detail: dict[str, Any] = Field(default_factory=dict)
    trace: dict[str, str] = Field(default_factory=dict)  # as ObjectsCreated.trace


NimbusEvent: TypeAlias = HttpRequest | ObjectsCreated | ScheduledTrigger


# ---------------------------------------------------------------------------
# Helpers shared by the sources.
# ---------------------------------------------------------------------------

_Raw = TypeVar("_Raw", bound=BaseModel)


def _one_line(text: str) -> str:
    """Collapse whitespace so an error message stays on one line (the CLI prints it bare)."""
    return " ".join(text.split())


def _describe(exc: ValidationError, prefix: str = "") -> str:
    """'s3.object.key: Field required' for the first problem; the first is what a person fixes."""
    errors = exc.errors(include_url=False)
    if not errors:  # pragma: no cover - pydantic always reports at least one
        return _one_line(str(exc))
    first = errors[0]
    parts = [prefix] if prefix else []
    for part in first["loc"]:
        if isinstance(part, int) and parts:
            parts[-1] = f"{parts[-1]}[{part}]"
        else:
            parts.append(str(part))
    where = ".".join(parts)
    # pydantic names the private model here ("instance of _S3Record"); say what JSON wants.
    message = "Input should be a JSON object" if first["type"] == "model_type" else first["msg"]
    text = f"{where}: {message}" if where else message
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more)"
    return _one_line(text)


def _validate(model: type[_Raw], value: object, where: str, prefix: str = "") -> _Raw:
    """Check ``value`` against a raw-shape model; a mismatch becomes one EventError line."""
    if value is None and prefix:
        # An absent nested payload (CloudEvent ``data``) is a missing field, not a wrong type.
        raise EventError(f"{where}: {prefix}: Field required")
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise EventError(f"{where}: {_describe(exc, prefix)}") from exc


def _keys(value: dict[Any, Any], limit: int = 12) -> str:
    """'[a, b, c]' for error messages: enough to tell which event arrived, never its payload."""
    names = sorted(str(key) for key in value)
    shown = names[:limit] + (["..."] if len(names) > limit else [])
    return "[" + ", ".join(shown) + "]"


def _first_record(event: dict[str, Any]) -> dict[str, Any] | None:
    """The first entry of ``Records`` when it is a dict; S3 and SQS both deliver that list."""
    records = event.get("Records")
    if isinstance(records, list) and records and isinstance(records[0], dict):
        return records[0]
    return None


def _last_segment(name: str) -> str:
    """'nightly' from 'arn:aws:events:...:rule/nightly' or '//cloudscheduler.../jobs/nightly'."""
    return name.rstrip("/").rsplit("/", 1)[-1] or name


def _is_object_created(event_name: str) -> bool:
    # AWS writes "ObjectCreated:Put"; MinIO-style emulators prefix "s3:". Both mean the same.
    return event_name.removeprefix("s3:").startswith("ObjectCreated:")


# ---------------------------------------------------------------------------
# Raw shapes, private: they mirror the cloud payloads and never leave this module.
# Unknown fields are ignored (pydantic's default) because clouds add fields over time.
# ---------------------------------------------------------------------------


class _ApiHttp(BaseModel):
    method: str
    path: str | None = None
    sourceIp: str | None = None


class _ApiRequestContext(BaseModel):
    http: _ApiHttp
    requestId: str | None = None


class _ApiGatewayV2Event(BaseModel):
    version: Literal["2.0"]
    routeKey: str | None = None
    rawPath: str
    rawQueryString: str = ""
    cookies: list[str] | None = None
    headers: dict[str, str] | None = None
    queryStringParameters: dict[str, str] | None = None
    pathParameters: dict[str, str] | None = None
    requestContext: _ApiRequestContext
    body: str | None = None
    isBase64Encoded: bool = False


class _S3Bucket(BaseModel):
    name: str


class _S3Object(BaseModel):
    key: str
    size: int | None = None
    eTag: str | None = None


class _S3Entity(BaseModel):
    bucket: _S3Bucket
    object: _S3Object


class _S3Record(BaseModel):
    eventName: str
    eventTime: datetime | None = None
    s3: _S3Entity


class _SqsRecord(BaseModel):
    messageId: str | None = None
    body: str


class _EventBridgeS3Object(BaseModel):
    key: str
    size: int | None = None
    etag: str | None = None


class _EventBridgeS3Detail(BaseModel):
    bucket: _S3Bucket
    object: _EventBridgeS3Object


class _EventBridgeS3Event(BaseModel):
    detail_type: str = Field(alias="detail-type")
    time: datetime | None = None
    detail: _EventBridgeS3Detail


class _EventBridgeScheduleEvent(BaseModel):
    time: datetime
    resources: list[str] = Field(min_length=1)
    detail: dict[str, Any] | None = None


class _CloudEventEnvelope(BaseModel):
    specversion: Literal["1.0"]
    id: str
    source: str
    type: str
    time: datetime | None = None
    subject: str | None = None
    data: Any = None
    data_base64: str | None = None
    # The distributed-tracing extension (W3C Trace Context), set by a producer that traces.
    traceparent: str | None = None
    tracestate: str | None = None

    def trace(self) -> dict[str, str]:
        return {k: v for k, v in (("traceparent", self.traceparent), ("tracestate", self.tracestate)) if v}


class _GcsObjectData(BaseModel):
    bucket: str
    name: str
    size: int | None = None  # GCS sends int64 as a JSON string ("352"); lax mode turns it into 352
    etag: str | None = None
    md5Hash: str | None = None
    timeCreated: datetime | None = None


class _AzureBlobData(BaseModel):
    url: str
    contentLength: int | None = None
    eTag: str | None = None


# ---------------------------------------------------------------------------
# Sources. ``infer`` is cheap and never raises: it only looks at the fields that
# make a shape unmistakable, so a damaged event of a known kind still reaches its
# ``parse`` and gets a precise error instead of "unrecognised event".
# ---------------------------------------------------------------------------


class EventSource:
    """One event shape: ``infer`` recognises it, ``parse`` turns it into a request."""

    label: ClassVar[str] = "event"  # how error messages name this source

    @classmethod
    def infer(cls, event: dict[str, Any]) -> bool:
        raise NotImplementedError

    @classmethod
    def parse(cls, event: dict[str, Any]) -> NimbusEvent:
        raise NotImplementedError


class ApiGatewayV2(EventSource):
    """HTTP API (payload format 2.0); Lambda function URLs send the same shape."""

    label = "API Gateway v2 event"

    @classmethod
    def infer(cls, event: dict[str, Any]) -> bool:
        return event.get("version") == "2.0" and isinstance(event.get("requestContext"), dict)

    @classmethod
    def parse(cls, event: dict[str, Any]) -> HttpRequest:
        raw = _validate(_ApiGatewayV2Event, event, cls.label)
        headers = dict(raw.headers or {})
        # Payload 2.0 moves Cookie headers into a list; put them back where HTTP code looks.
        if raw.cookies and not any(name.lower() == "cookie" for name in headers):
            headers["cookie"] = "; ".join(raw.cookies)
        body: bytes | str = raw.body or ""
        if raw.isBase64Encoded and raw.body:
            try:
                body = base64.b64decode(raw.body, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise EventError(f"{cls.label}: body: isBase64Encoded is true but the body is not base64") from exc
        return HttpRequest(
            method=raw.requestContext.http.method,
            path=raw.rawPath,
            raw_query=raw.rawQueryString,
            query=raw.queryStringParameters or {},
            headers=headers,
            path_params=raw.pathParameters or {},
            body=body,
            request_id=raw.requestContext.requestId,
            source_ip=raw.requestContext.http.sourceIp,
            route_key=raw.routeKey,
        )


def _objects_from_s3_records(records: list[Any], where: str, source: ObjectSource) -> list[ObjectCreated]:
    """ObjectCreated for each S3 notification record; ``where`` prefixes each record's errors."""
    objects: list[ObjectCreated] = []
    for index, record in enumerate(records):
        here = f"{where} {index}"
        raw = _validate(_S3Record, record, here)
        if not _is_object_created(raw.eventName):
            raise EventError(f"{here}: eventName {raw.eventName!r} is not an ObjectCreated event")
        objects.append(
            ObjectCreated(
                bucket=raw.s3.bucket.name,
                # S3 form-encodes keys in notifications ("red flower.jpg" -> "red+flower.jpg").
                key=unquote_plus(raw.s3.object.key),
                size=raw.s3.object.size,
                etag=raw.s3.object.eTag,
                event_time=raw.eventTime,
                source=source,
            )
        )
    return objects


class S3Notification(EventSource):
    """S3 invoking the function directly: ``{"Records": [{"eventSource": "aws:s3", ...}]}``."""

    label = "S3 event"

    @classmethod
    def infer(cls, event: dict[str, Any]) -> bool:
        first = _first_record(event)
        return first is not None and first.get("eventSource") == "aws:s3"

    @classmethod
    def parse(cls, event: dict[str, Any]) -> ObjectsCreated:
        return ObjectsCreated(objects=_objects_from_s3_records(event["Records"], "S3 event record", "aws:s3"))


class SqsWrappedS3(EventSource):
    """An SQS batch whose message bodies are S3 notifications (S3 -> SQS -> function)."""

    label = "SQS(S3) event"

    @classmethod
    def infer(cls, event: dict[str, Any]) -> bool:
        first = _first_record(event)
        return first is not None and first.get("eventSource") == "aws:sqs"

    @classmethod
    def parse(cls, event: dict[str, Any]) -> ObjectsCreated:
        objects: list[ObjectCreated] = []
        for index, record in enumerate(event["Records"]):
            here = f"SQS(S3) message {index}"
            raw = _validate(_SqsRecord, record, here)
            if raw.messageId:
                here += f" ({raw.messageId})"
            notification = cls._notification(raw.body, here)
            if notification is None:
                continue
            objects += _objects_from_s3_records(notification["Records"], f"{here} record", "aws:sqs")
        # A batch of only test events yields no objects: there is simply nothing to do.
        return ObjectsCreated(objects=objects)

    @classmethod
    def _notification(cls, body: str, here: str) -> dict[str, Any] | None:
        """The S3 notification in one message body, or None for S3's configuration test event."""
        try:
            payload = json.loads(body)
        except json.JSONDecodeError as exc:
            raise EventError(f"{here}: body is not JSON ({exc.msg} at char {exc.pos})") from exc
        # S3 -> SNS -> SQS fan-out wraps the notification once more, as a string in "Message".
        if isinstance(payload, dict) and payload.get("Type") == "Notification" and isinstance(payload.get("Message"), str):
            return cls._notification(payload["Message"], here)
        if not isinstance(payload, dict):
            raise EventError(f"{here}: body is JSON {type(payload).__name__}, expected an S3 notification object")
        # S3 sends this once when the notification is configured; it announces no object.
        if payload.get("Event") == "s3:TestEvent":
            return None
        records = payload.get("Records")
        if not isinstance(records, list):
            raise EventError(f"{here}: body is not an S3 notification (no Records list; keys {_keys(payload)})")
        return payload


class EventBridgeS3(EventSource):
    """EventBridge "Object Created" events from ``aws.s3`` (bucket with EventBridge enabled)."""

    label = "EventBridge S3 event"

    @classmethod
    def infer(cls, event: dict[str, Any]) -> bool:
        return event.get("source") == "aws.s3" and "detail-type" in event

    @classmethod
    def parse(cls, event: dict[str, Any]) -> ObjectsCreated:
        raw = _validate(_EventBridgeS3Event, event, cls.label)
        if raw.detail_type != "Object Created":
            raise EventError(f"{cls.label}: detail-type {raw.detail_type!r} is not 'Object Created'")
        obj = raw.detail.object
        return ObjectsCreated(
            objects=[
                ObjectCreated(
                    bucket=raw.detail.bucket.name,
                    # Encoded like S3 notifications; decoding an unencoded key is harmless
                    # unless it holds '+' or '%', which S3 itself would have encoded.
                    key=unquote_plus(obj.key),
                    size=obj.size,
                    etag=obj.etag,
                    event_time=raw.time,
                    source="aws:events",
                )
            ]
        )


class EventBridgeSchedule(EventSource):
    """An EventBridge schedule rule firing: ``source: aws.events``, ``detail-type: Scheduled Event``."""

    label = "EventBridge scheduled event"

    @classmethod
    def infer(cls, event: dict[str, Any]) -> bool:
        return event.get("source") == "aws.events" and event.get("detail-type") == "Scheduled Event"

    @classmethod
    def parse(cls, event: dict[str, Any]) -> ScheduledTrigger:
        raw = _validate(_EventBridgeScheduleEvent, event, cls.label)
        # resources[0] is the rule ARN: arn:aws:events:REGION:ACCOUNT:rule/[BUS/]NAME.
        return ScheduledTrigger(
            rule=_last_segment(raw.resources[0]),
            time=raw.time,
            source="aws:events",
            detail=raw.detail or {},
        )


_GCS_FINALIZED = "google.cloud.storage.object.v1.finalized"
_AZURE_BLOB_CREATED = "Microsoft.Storage.BlobCreated"
_GCP_SCHEDULER = "google.cloud.scheduler.job.v1.executed"


class CloudEvent(EventSource):
    """CNCF CloudEvents 1.0 in structured JSON mode (Eventarc, Azure Event Grid, Knative...)."""

    label = "CloudEvent"

    @classmethod
    def infer(cls, event: dict[str, Any]) -> bool:
        # specversion is the one attribute no other supported shape has.
        return "specversion" in event

    @classmethod
    def parse(cls, event: dict[str, Any]) -> ObjectsCreated | ScheduledTrigger:
        envelope = _validate(_CloudEventEnvelope, event, cls.label)
        kind = envelope.type
        where = f"{cls.label} {kind}"
        data = cls._data(envelope, where)
        if kind == _GCS_FINALIZED:
            return cls._gcs(data, envelope, where)
        if kind == _AZURE_BLOB_CREATED:
            return cls._azure(data, envelope, where)
        if kind == _GCP_SCHEDULER or kind.endswith(".schedule") or "scheduler" in kind.lower():
            return cls._schedule(data, envelope, where)
        raise EventError(
            f"{cls.label} type {kind!r} is not supported; expected {_GCS_FINALIZED}, "
            f"{_AZURE_BLOB_CREATED}, {_GCP_SCHEDULER} or a *.schedule type"
        )

    @staticmethod
    def _data(envelope: _CloudEventEnvelope, where: str) -> Any:
        """``data``, or the JSON inside ``data_base64`` (binary payloads in structured mode)."""
        if envelope.data is not None or envelope.data_base64 is None:
            return envelope.data
        try:
            return json.loads(base64.b64decode(envelope.data_base64, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise EventError(f"{where}: data_base64 is not base64-encoded JSON") from exc

    @staticmethod
    def _gcs(data: Any, envelope: _CloudEventEnvelope, where: str) -> ObjectsCreated:
        raw = _validate(_GcsObjectData, data, where, prefix="data")
        return ObjectsCreated(
            objects=[
                ObjectCreated(
                    bucket=raw.bucket,
                    key=raw.name,  # GCS sends object names verbatim, not URL-encoded
                    size=raw.size,
                    etag=raw.etag or raw.md5Hash,
                    event_time=raw.timeCreated or envelope.time,
                    source="cloudevents",
                )
            ],
            trace=envelope.trace(),
        )

    @staticmethod
    def _azure(data: Any, envelope: _CloudEventEnvelope, where: str) -> ObjectsCreated:
        raw = _validate(_AzureBlobData, data, where, prefix="data")
        # https://ACCOUNT.blob.core.windows.net/CONTAINER/path/to/blob (percent-encoded path).
        container, _, blob = urlsplit(raw.url).path.lstrip("/").partition("/")
        if not container or not blob:
            expected = "https://<account>.blob.core.windows.net/<container>/<blob>"
            raise EventError(f"{where}: data.url: expected {expected}, got {raw.url!r}")
        return ObjectsCreated(
            objects=[
                ObjectCreated(
                    bucket=unquote(container),
                    key=unquote(blob),  # a URL path: '+' is a literal plus here, unlike S3 keys
                    size=raw.contentLength,
                    etag=raw.eTag,
                    event_time=envelope.time,
                    source="cloudevents",
                )
            ],
            trace=envelope.trace(),
        )

    @staticmethod
    def _schedule(data: Any, envelope: _CloudEventEnvelope, where: str) -> ScheduledTrigger:
        if envelope.time is None:
            raise EventError(f"{where}: time: Field required (a scheduled trigger needs the time it fired)")
        if data is None:
            detail: dict[str, Any] = {}
        elif isinstance(data, dict):
            detail = data
        else:
            detail = {"data": data}
        return ScheduledTrigger(
            # //cloudscheduler.googleapis.com/projects/P/locations/L/jobs/NAME -> NAME
            rule=_last_segment(envelope.source),
            time=envelope.time,
            source="cloudevents",
            detail=detail,
            trace=envelope.trace(),
        )


# Order matters only for shapes that could overlap; these cannot, but API Gateway comes
# first because HTTP calls are the hot path.
SOURCES: list[type[EventSource]] = [
    ApiGatewayV2,
    S3Notification,
    SqsWrappedS3,
    EventBridgeS3,
    EventBridgeSchedule,
    CloudEvent,
]

_EXPECTED = "API Gateway v2, S3, SQS(S3), EventBridge, CloudEvents"


def _source_for(event: dict[str, Any]) -> type[EventSource] | None:
    for source in SOURCES:
        if source.infer(event):
            return source
    return None


def infer_source(event: object) -> str | None:
    """The name of the source class that would parse ``event`` (for logs), else None."""
    if not isinstance(event, dict):
        return None
    source = _source_for(event)
    return source.__name__ if source is not None else None


def parse(event: object) -> NimbusEvent:
    """Turn a cloud event (already decoded from JSON) into a typed Nimbus request.

    Raises EventError, with a one-line message naming the source and the field, for
    anything that is not a well-formed event of a supported source.
    """
    if not isinstance(event, dict):
        raise EventError(f"unrecognised event: expected a JSON object, got {type(event).__name__}")
    source = _source_for(event)
    if source is None:
        raise EventError(f"unrecognised event: expected one of {_EXPECTED}; got keys {_keys(event)}")
    try:
        return source.parse(event)
    except EventError:
        raise
    except ValidationError as exc:
        # A public model refused a value that the raw shape let through.
        raise EventError(f"{source.label}: {_describe(exc)}") from exc
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        # A shape this module did not foresee: still one line, still an EventError.
        raise EventError(_one_line(f"{source.label}: {type(exc).__name__}: {exc}")) from exc
