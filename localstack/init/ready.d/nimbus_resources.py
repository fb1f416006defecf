#!/usr/bin/env python3
"""Create Nimbus's buckets, queues and the drop-folder notification on an S3/SQS emulator.

One implementation for every emulator: LocalStack runs this file as an init hook
(``/etc/localstack/init/ready.d``) and ``nimbus local up`` runs it against moto. It reads
``../../resources.json`` (or $NIMBUS_RESOURCES) and needs only the standard library and
boto3, both present in LocalStack's image. Idempotent: applying twice changes nothing.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import boto3


def _spec_path() -> Path:
    if os.environ.get("NIMBUS_RESOURCES"):
        return Path(os.environ["NIMBUS_RESOURCES"])
    # LocalStack exec()s Python hooks without __file__; docker-compose sets NIMBUS_RESOURCES there.
    here = Path(globals().get("__file__", ".")).resolve().parent
    for candidate in (here.parent.parent / "resources.json", here / "resources.json"):
        if candidate.exists():
            return candidate
    raise SystemExit(f"resources.json not found near {here}; set NIMBUS_RESOURCES")


def apply(spec: dict, endpoint: str, region: str) -> list[str]:
    """Apply ``spec`` to the emulator at ``endpoint``; returns what was done, one line each."""
    creds = {
        "aws_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
    }
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=region, **creds)
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name=region, **creds)
    done: list[str] = []

    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in spec["buckets"]:
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)
            done.append(f"bucket {bucket}")

    arns: dict[str, str] = {}
    for queue in spec["queues"]:
        attributes = {}
        if "visibility_timeout_s" in queue:
            attributes["VisibilityTimeout"] = str(queue["visibility_timeout_s"])
        if "dead_letter" in queue:
            dlq = queue["dead_letter"]
            attributes["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": arns[dlq["queue"]], "maxReceiveCount": str(dlq["max_receive_count"])}
            )
        url = sqs.create_queue(QueueName=queue["name"], Attributes=attributes)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        arns[queue["name"]] = arn
        # Real S3 (and LocalStack) only deliver to a queue whose policy lets S3 send.
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "s3.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": arn,
                }
            ],
        }
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})
        done.append(f"queue {queue['name']}")

    by_bucket: dict[str, list[dict]] = {}
    for note in spec["notifications"]:
        by_bucket.setdefault(note["bucket"], []).append(
            {
                "Id": f"nimbus-{note['queue']}",
                "QueueArn": arns[note["queue"]],
                "Events": note["events"],
                "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": note["prefix"]}]}},
            }
        )
    for bucket, configs in by_bucket.items():
        s3.put_bucket_notification_configuration(
            Bucket=bucket, NotificationConfiguration={"QueueConfigurations": configs}
        )
        done.append(f"notification {bucket} -> {', '.join(c['QueueArn'].rsplit(':', 1)[-1] for c in configs)}")
    return done


def main() -> int:
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "http://localhost:4566")
    region = os.environ.get("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1"))
    spec = json.loads(_spec_path().read_text())
    for line in apply(spec, endpoint, region):
        print(f"nimbus resources: {line}")
    return 0


# Run as a script (`python nimbus_resources.py`) or exec()'d by LocalStack's hook runner,
# where __name__ resolves to the builtins module's name.
if __name__ in ("__main__", "builtins"):
    status = main()
    if __name__ == "__main__":
        sys.exit(status)
