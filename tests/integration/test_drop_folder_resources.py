"""The resources in localstack/resources.json, applied to the real S3/SQS emulator."""

from __future__ import annotations

import json
import time

import pytest

from nimbus.config import Settings
from nimbus.events import ObjectsCreated, parse
from nimbus.local.stack import LocalStack
from nimbus.stores.objects import ObjectStore, QueueStore

pytestmark = pytest.mark.integration


def wait_messages(queue: QueueStore, want: int, timeout_s: float = 15) -> list[dict]:
    found: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while len(found) < want and time.monotonic() < deadline:
        for message in queue.receive(wait_s=1):
            body = json.loads(message["Body"])
            queue.delete(message["ReceiptHandle"])
            if body.get("Event") != "s3:TestEvent":
                found.append(body)
    return found


def test_a_file_in_the_drop_folder_notifies_the_queue_with_its_key(clean_stack: Settings) -> None:
    objects, queue = ObjectStore.for_settings(clean_stack), QueueStore(clean_stack)
    key = f"{clean_stack.drop_prefix}2026/11/scores (v2)+final.csv"
    objects.put_bytes(clean_stack.data_bucket, key, b"a,b\n1,2\n")
    [notification] = wait_messages(queue, 1)
    event = parse(notification)
    assert isinstance(event, ObjectsCreated)
    [obj] = event.objects
    assert (obj.bucket, obj.key, obj.size) == (clean_stack.data_bucket, key, 8)  # URL-decoded


def test_files_outside_the_drop_folder_do_not_notify(clean_stack: Settings) -> None:
    objects, queue = ObjectStore.for_settings(clean_stack), QueueStore(clean_stack)
    objects.put_bytes(clean_stack.data_bucket, "datasets/elsewhere.csv", b"x")
    assert wait_messages(queue, 1, timeout_s=3) == []


def test_applying_the_resources_twice_changes_nothing(clean_stack: Settings) -> None:
    stack = LocalStack(clean_stack, ephemeral=True)
    stack.apply_resources()
    stack.apply_resources()
    s3 = ObjectStore.for_settings(clean_stack).client
    config = s3.get_bucket_notification_configuration(Bucket=clean_stack.data_bucket)
    assert len(config["QueueConfigurations"]) == 2  # the gateway's queue and Airflow's
    sqs = QueueStore(clean_stack).client
    names = [u.rsplit("/", 1)[-1] for u in sqs.list_queues()["QueueUrls"]]
    assert sorted(names) == ["nimbus-airflow-drops", "nimbus-drop-events", "nimbus-drop-events-dlq"]
    attributes = sqs.get_queue_attributes(QueueUrl=QueueStore(clean_stack).queue_url, AttributeNames=["All"])
    assert json.loads(attributes["Attributes"]["RedrivePolicy"])["maxReceiveCount"] in (3, "3")


def test_a_message_put_back_for_later_is_received_again(clean_stack: Settings) -> None:
    objects, queue = ObjectStore.for_settings(clean_stack), QueueStore(clean_stack)
    key = f"{clean_stack.drop_prefix}retry.csv"
    objects.put_bytes(clean_stack.data_bucket, key, b"a\n1\n")
    deadline = time.monotonic() + 15
    first = None
    while first is None and time.monotonic() < deadline:
        for message in queue.receive(wait_s=1):
            if json.loads(message["Body"]).get("Event") == "s3:TestEvent":
                queue.delete(message["ReceiptHandle"])
            else:
                first = message
    assert first is not None
    queue.retry_later(first["ReceiptHandle"], 0)  # visible again at once
    again = [m for m in queue.receive(wait_s=2) if m["MessageId"] == first["MessageId"]]
    assert len(again) == 1 and int(again[0]["Attributes"]["ApproximateReceiveCount"]) == 2
    queue.delete(again[0]["ReceiptHandle"])
