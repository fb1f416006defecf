"""nimbus.events: every supported cloud event becomes a typed request; anything else an EventError."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from nimbus.errors import EventError
from nimbus.events import (
    SOURCES,
    ApiGatewayV2,
    CloudEvent,
    EventBridgeS3,
    EventBridgeSchedule,
    HttpRequest,
    ObjectCreated,
    ObjectsCreated,
    S3Notification,
    ScheduledTrigger,
    SqsWrappedS3,
    infer_source,
    parse,
)

EVENTS = Path(__file__).resolve().parents[1] / "data" / "events"


def load(name: str) -> dict[str, Any]:
    """A fresh copy of a sample event, so a test may damage it freely."""
    return json.loads((EVENTS / f"{name}.json").read_text(encoding="utf-8"))


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def raises_event_error(event: object) -> str:
    """parse() must fail with EventError (never KeyError/TypeError/ValidationError) on one line."""
    with pytest.raises(EventError) as caught:
        parse(event)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- source inference -------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample", "source"),
    [
        ("apigw_v2_get", ApiGatewayV2),
        ("apigw_v2_post_base64", ApiGatewayV2),
        ("s3_put_encoded_key", S3Notification),
        ("s3_two_records", S3Notification),
        ("sqs_s3", SqsWrappedS3),
        ("eventbridge_s3_object_created", EventBridgeS3),
        ("eventbridge_scheduled", EventBridgeSchedule),
        ("cloudevent_gcs_finalized", CloudEvent),
        ("cloudevent_azure_blob_created", CloudEvent),
        ("cloudevent_gcp_scheduler", CloudEvent),
    ],
)
def test_each_sample_is_claimed_by_exactly_one_source(sample: str, source: type) -> None:
    event = load(sample)
    assert [s for s in SOURCES if s.infer(event)] == [source]
    assert infer_source(event) == source.__name__


@pytest.mark.parametrize(
    "event",
    [
        {},
        [],
        "x",
        None,
        {"Records": "nope"},
        {"Records": [1]},
        {"Records": []},
        {"version": "2.0"},
        {"source": "aws.sqs"},
    ],
)
def test_infer_source_returns_none_for_unknown_shapes_without_raising(event: object) -> None:
    assert infer_source(event) is None


# --- API Gateway v2 -----------------------------------------------------------------


def test_apigw_v2_get_exposes_method_path_query_and_path_params() -> None:
    request = parse(load("apigw_v2_get"))

    assert isinstance(request, HttpRequest)
    assert request.method == "GET"
    assert request.path == "/users/42/recommendations"
    assert request.raw_query == "limit=5&category=books&category=music"
    assert request.query == {"limit": "5", "category": "books,music"}
    assert request.path_params == {"user_id": "42"}
    assert request.route_key == "GET /users/{user_id}/recommendations"
    assert request.request_id == "JKJaXmPLvHcESHA="
    assert request.source_ip == "203.0.113.7"
    assert request.body == ""


def test_apigw_v2_cookies_are_folded_back_into_the_cookie_header() -> None:
    request = parse(load("apigw_v2_get"))

    assert request.headers["cookie"] == "session=7f3a9c; theme=dark"


def test_apigw_v2_header_names_are_lower_cased() -> None:
    event = load("apigw_v2_get")
    event["headers"]["X-Request-Source"] = "Dashboard"

    request = parse(event)

    assert request.headers["x-request-source"] == "Dashboard"
    assert request.header("X-API-Key") == "nimbus-local-key"
    assert all(name == name.lower() for name in request.headers)


def test_apigw_v2_base64_body_is_decoded_to_bytes() -> None:
    event = load("apigw_v2_post_base64")

    request = parse(event)

    assert request.method == "POST"
    assert isinstance(request.body, bytes)
    assert request.body == base64.b64decode(event["body"])
    assert json.loads(request.body)["rows"][0]["item"] == "café crème"
    assert request.header("content-type") == "application/json; charset=utf-8"


def test_apigw_v2_plain_body_stays_text() -> None:
    event = load("apigw_v2_post_base64")
    event["body"] = '{"rows": []}'
    event["isBase64Encoded"] = False

    assert parse(event).body == '{"rows": []}'


def test_apigw_v2_without_optional_maps_gives_empty_dicts() -> None:
    event = load("apigw_v2_get")
    for optional in ("queryStringParameters", "pathParameters", "cookies", "headers"):
        del event[optional]

    request = parse(event)

    assert (request.query, request.path_params, request.headers) == ({}, {}, {})


def test_http_request_is_frozen() -> None:
    request = parse(load("apigw_v2_get"))

    with pytest.raises(ValidationError):
        request.path = "/elsewhere"  # type: ignore[misc]


# --- S3 notifications -----------------------------------------------------------------


def test_s3_keys_are_url_decoded() -> None:
    created = parse(load("s3_put_encoded_key"))

    assert isinstance(created, ObjectsCreated)
    assert created.objects == [
        ObjectCreated(
            bucket="nimbus-data",
            key="incoming/2024-05-02/Q1 sales & returns (v2+).csv",
            size=1024,
            etag="d41d8cd98f00b204e9800998ecf8427e",
            event_time=utc(2024, 5, 2, 10, 15, 30, 123000),
            source="aws:s3",
        )
    ]


def test_s3_notification_with_two_records_yields_two_objects_in_order() -> None:
    created = parse(load("s3_two_records"))

    assert [obj.key for obj in created.objects] == [
        "incoming/2024-05-02/users.parquet",
        "incoming/2024-05-02/items.parquet",
    ]
    assert [obj.size for obj in created.objects] == [52431, 198524144]


def test_s3_etag_quotes_are_stripped() -> None:
    created = parse(load("s3_two_records"))

    assert created.objects[1].etag == "4af981f98d22a0b9979da24b259e5e42-12"


def test_s3_non_object_created_event_is_refused_by_name() -> None:
    event = load("s3_two_records")
    event["Records"][1]["eventName"] = "ObjectRemoved:Delete"

    message = raises_event_error(event)

    assert "S3 event record 1" in message
    assert "ObjectRemoved:Delete" in message


def test_s3_record_missing_key_names_the_record_and_field_path() -> None:
    event = load("s3_put_encoded_key")
    del event["Records"][0]["s3"]["object"]["key"]

    assert raises_event_error(event) == "S3 event record 0: s3.object.key: Field required"


def test_s3_record_with_wrong_types_names_the_field() -> None:
    event = load("s3_two_records")
    event["Records"][1]["s3"]["object"]["size"] = "huge"
    event["Records"][1]["s3"]["bucket"] = "nimbus-data"

    message = raises_event_error(event)

    assert message.startswith("S3 event record 1: ")
    assert "s3.bucket" in message
    assert "and 1 more" in message


def test_s3_record_that_is_not_an_object_is_an_event_error() -> None:
    event = load("s3_two_records")
    event["Records"][1] = "incoming/users.parquet"

    assert raises_event_error(event) == "S3 event record 1: Input should be a JSON object"


# --- SQS-wrapped S3 -----------------------------------------------------------------


def test_sqs_wrapped_s3_keys_are_url_decoded() -> None:
    created = parse(load("sqs_s3"))

    assert [obj.key for obj in created.objects] == [
        "incoming/2024-05-02/Q1 sales & returns (v2+).csv",
        "incoming/2024-05-02/web events #1.json",
    ]
    assert {obj.source for obj in created.objects} == {"aws:sqs"}
    assert created.objects[0].event_time == utc(2024, 5, 2, 10, 15, 30, 123000)


def test_sqs_s3_test_event_is_skipped_not_an_error() -> None:
    event = load("sqs_s3")
    event["Records"] = event["Records"][:1]  # only the s3:TestEvent message

    assert parse(event) == ObjectsCreated(objects=[])


def test_sqs_wrapped_s3_through_sns_is_unwrapped() -> None:
    event = load("sqs_s3")
    record = event["Records"][1]
    record["body"] = json.dumps(
        {
            "Type": "Notification",
            "MessageId": "95df01b4-ee98-5cb9-9903-4c221d41eb5e",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:nimbus-drops",
            "Subject": "Amazon S3 Notification",
            "Message": record["body"],
            "Timestamp": "2024-05-02T10:15:30.600Z",
        }
    )
    event["Records"] = [record]

    assert [obj.key for obj in parse(event).objects] == ["incoming/2024-05-02/Q1 sales & returns (v2+).csv"]


def test_sqs_non_json_body_names_the_message() -> None:
    message = raises_event_error(load("malformed_sqs_non_json_body"))

    assert message.startswith("SQS(S3) message 0 (7b3a1c0e-3f2a-4c59-9a3e-1d2c3b4a5f60): body is not JSON")


def test_sqs_body_that_is_not_an_s3_notification_is_refused() -> None:
    event = load("sqs_s3")
    event["Records"][2]["body"] = json.dumps({"order_id": 17, "status": "paid"})

    message = raises_event_error(event)

    assert "SQS(S3) message 2" in message
    assert "not an S3 notification" in message
    assert "order_id" in message


def test_sqs_wrapped_s3_record_missing_bucket_names_message_record_and_field() -> None:
    event = load("sqs_s3")
    inner = json.loads(event["Records"][1]["body"])
    del inner["Records"][0]["s3"]["bucket"]["name"]
    event["Records"][1]["body"] = json.dumps(inner)

    assert raises_event_error(event) == (
        "SQS(S3) message 1 (059f36b4-87a3-44ab-83d2-661975830a7d) record 0: s3.bucket.name: Field required"
    )


def test_sqs_message_without_body_names_the_field() -> None:
    event = load("sqs_s3")
    del event["Records"][0]["body"]

    assert raises_event_error(event) == "SQS(S3) message 0: body: Field required"


# --- EventBridge --------------------------------------------------------------------


def test_eventbridge_s3_object_created_becomes_one_object() -> None:
    created = parse(load("eventbridge_s3_object_created"))

    assert created.objects == [
        ObjectCreated(
            bucket="nimbus-data",
            key="incoming/2024-05-02/orders export.csv",
            size=5242880,
            etag="b1946ac92492d2347c6235b4d2611184",
            event_time=utc(2024, 5, 2, 10, 15, 34),
            source="aws:events",
        )
    ]


def test_eventbridge_s3_other_detail_type_is_refused_by_name() -> None:
    event = load("eventbridge_s3_object_created")
    event["detail-type"] = "Object Deleted"

    message = raises_event_error(event)

    assert message.startswith("EventBridge S3 event")
    assert "Object Deleted" in message


def test_eventbridge_s3_missing_object_key_names_the_path() -> None:
    event = load("eventbridge_s3_object_created")
    del event["detail"]["object"]["key"]

    assert raises_event_error(event) == "EventBridge S3 event: detail.object.key: Field required"


def test_eventbridge_schedule_rule_name_comes_from_the_rule_arn() -> None:
    trigger = parse(load("eventbridge_scheduled"))

    assert trigger == ScheduledTrigger(
        rule="nimbus-nightly-retrain", time=utc(2024, 5, 3, 2), source="aws:events", detail={}
    )


def test_eventbridge_schedule_on_a_custom_bus_keeps_only_the_rule_name() -> None:
    event = load("eventbridge_scheduled")
    event["resources"] = ["arn:aws:events:us-east-1:123456789012:rule/nimbus-bus/hourly-batch"]

    assert parse(event).rule == "hourly-batch"


def test_eventbridge_schedule_without_resources_is_an_event_error() -> None:
    event = load("eventbridge_scheduled")
    event["resources"] = []

    message = raises_event_error(event)

    assert message.startswith("EventBridge scheduled event: resources: ")


def test_eventbridge_schedule_with_bad_time_names_the_field() -> None:
    event = load("eventbridge_scheduled")
    event["time"] = "yesterday"

    assert raises_event_error(event).startswith("EventBridge scheduled event: time: ")


# --- CloudEvents --------------------------------------------------------------------


def test_cloudevent_gcs_finalized_becomes_an_object_with_integer_size() -> None:
    created = parse(load("cloudevent_gcs_finalized"))

    assert created.objects == [
        ObjectCreated(
            bucket="nimbus-data",
            key="incoming/2024-05-02/click+view events.parquet",  # GCS names are not URL-encoded
            size=52431,
            etag="CLWp8pfh6YUDEAE=",
            event_time=utc(2024, 5, 2, 10, 15, 31, 468000),
            source="cloudevents",
        )
    ]


def test_cloudevent_gcs_without_etag_falls_back_to_md5_hash() -> None:
    event = load("cloudevent_gcs_finalized")
    del event["data"]["etag"]

    assert parse(event).objects[0].etag == "kF8MuJ5+CTJxvyhHS1xzRg=="


def test_cloudevent_gcs_missing_bucket_names_the_type_and_data_field() -> None:
    event = load("cloudevent_gcs_finalized")
    del event["data"]["bucket"]

    assert raises_event_error(event) == (
        "CloudEvent google.cloud.storage.object.v1.finalized: data.bucket: Field required"
    )


def test_cloudevent_gcs_without_data_says_data_is_required() -> None:
    event = load("cloudevent_gcs_finalized")
    del event["data"]

    assert raises_event_error(event) == "CloudEvent google.cloud.storage.object.v1.finalized: data: Field required"


def test_cloudevent_gcs_with_non_object_data_asks_for_a_json_object() -> None:
    event = load("cloudevent_gcs_finalized")
    event["data"] = "incoming/2024-05-02/users.parquet"

    message = raises_event_error(event)

    assert message == "CloudEvent google.cloud.storage.object.v1.finalized: data: Input should be a JSON object"
    assert "_Gcs" not in message  # private model names stay private


def test_cloudevent_gcs_with_non_numeric_size_names_the_field() -> None:
    event = load("cloudevent_gcs_finalized")
    event["data"]["size"] = "large"

    assert raises_event_error(event).startswith("CloudEvent google.cloud.storage.object.v1.finalized: data.size: ")


def test_cloudevent_azure_blob_url_splits_into_container_and_decoded_blob_path() -> None:
    created = parse(load("cloudevent_azure_blob_created"))

    assert created.objects == [
        ObjectCreated(
            bucket="incoming",
            key="2024-05-02/q1 report.csv",
            size=524288,
            etag="0x8DC6A8B3E4F5A6B",
            event_time=utc(2024, 5, 2, 10, 15, 32, 958410),
            source="cloudevents",
        )
    ]


def test_cloudevent_azure_url_without_blob_path_is_refused() -> None:
    event = load("cloudevent_azure_blob_created")
    event["data"]["url"] = "https://nimbusdata.blob.core.windows.net/incoming"

    message = raises_event_error(event)

    assert message.startswith("CloudEvent Microsoft.Storage.BlobCreated: data.url: ")


def test_cloudevent_gcp_scheduler_becomes_a_trigger_named_after_the_job() -> None:
    trigger = parse(load("cloudevent_gcp_scheduler"))

    assert isinstance(trigger, ScheduledTrigger)
    assert trigger.rule == "nightly-retrain"
    assert trigger.time == utc(2024, 5, 3, 2, 0, 0, 123000)
    assert trigger.source == "cloudevents"
    assert base64.b64decode(trigger.detail["customData"]) == b'{"model": "recs"}'


def test_cloudevent_custom_schedule_type_without_data_is_a_trigger() -> None:
    event = {
        "specversion": "1.0",
        "id": "b1",
        "source": "nimbus/local/hourly-batch",
        "type": "dev.nimbus.schedule",
        "time": "2024-05-03T03:00:00Z",
    }

    assert parse(event) == ScheduledTrigger(
        rule="hourly-batch", time=utc(2024, 5, 3, 3), source="cloudevents", detail={}
    )


@pytest.mark.parametrize("sample", ["cloudevent_gcs_finalized", "cloudevent_azure_blob_created",
                                    "cloudevent_gcp_scheduler"])
def test_a_cloudevents_trace_context_is_kept_for_the_run(sample: str) -> None:
    """The distributed-tracing extension (traceparent, tracestate): the batch run continues that trace."""
    event = load(sample)
    assert parse(event).trace == {}
    event["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert parse(event).trace == {"traceparent": event["traceparent"]}
    event["tracestate"] = "congo=t61rcWkgMzE"
    assert parse(event).trace == {"traceparent": event["traceparent"], "tracestate": "congo=t61rcWkgMzE"}


def test_cloudevent_schedule_without_time_is_refused() -> None:
    event = load("cloudevent_gcp_scheduler")
    del event["time"]

    assert raises_event_error(event).startswith("CloudEvent google.cloud.scheduler.job.v1.executed: time: ")


def test_cloudevent_data_base64_is_decoded_as_json() -> None:
    event = load("cloudevent_gcs_finalized")
    event["data_base64"] = base64.b64encode(json.dumps(event.pop("data")).encode()).decode()

    assert parse(event).objects[0].key == "incoming/2024-05-02/click+view events.parquet"


def test_cloudevent_unsupported_type_is_refused_by_name() -> None:
    message = raises_event_error(load("malformed_cloudevent_unsupported_type"))

    assert "google.cloud.pubsub.topic.v1.messagePublished" in message
    assert "not supported" in message


def test_cloudevent_missing_required_attribute_names_it() -> None:
    event = load("cloudevent_gcs_finalized")
    del event["type"]

    assert raises_event_error(event) == "CloudEvent: type: Field required"


def test_cloudevent_other_specversion_is_refused() -> None:
    event = load("cloudevent_gcs_finalized")
    event["specversion"] = "0.3"

    assert raises_event_error(event).startswith("CloudEvent: specversion: ")


# --- whatever else arrives ------------------------------------------------------------


def test_empty_dict_is_unrecognised_and_lists_the_expected_sources() -> None:
    message = raises_event_error({})

    assert message == (
        "unrecognised event: expected one of API Gateway v2, S3, SQS(S3), EventBridge, CloudEvents; got keys []"
    )


def test_unknown_dict_reports_its_keys_not_its_values() -> None:
    message = raises_event_error({"httpMethod": "GET", "resource": "/users", "secret": "hunter2"})

    assert message.startswith("unrecognised event: ")
    assert "[httpMethod, resource, secret]" in message
    assert "hunter2" not in message


@pytest.mark.parametrize("event", [[load("s3_put_encoded_key")], "{}", b"{}", None, 42])
def test_non_dict_input_is_an_event_error_naming_its_type(event: object) -> None:
    message = raises_event_error(event)

    assert message.startswith("unrecognised event: expected a JSON object, got ")
    assert type(event).__name__ in message


def test_apigw_v2_missing_request_context_http_names_the_path() -> None:
    event = load("apigw_v2_get")
    del event["requestContext"]["http"]

    assert raises_event_error(event) == "API Gateway v2 event: requestContext.http: Field required"


def test_apigw_v2_header_with_wrong_type_names_the_header() -> None:
    event = load("apigw_v2_get")
    event["headers"]["content-length"] = 0

    assert raises_event_error(event).startswith("API Gateway v2 event: headers.content-length: ")


def test_apigw_v2_invalid_base64_body_is_an_event_error() -> None:
    event = load("apigw_v2_post_base64")
    event["body"] = "not base64!"

    assert raises_event_error(event) == (
        "API Gateway v2 event: body: isBase64Encoded is true but the body is not base64"
    )


def test_errors_keep_the_validation_error_as_cause_for_logs() -> None:
    event = load("s3_put_encoded_key")
    del event["Records"][0]["s3"]["object"]["key"]

    with pytest.raises(EventError) as caught:
        parse(event)

    assert isinstance(caught.value.__cause__, ValidationError)
    assert isinstance(caught.value, ValueError)  # EventError is a ValueError for callers that catch those
