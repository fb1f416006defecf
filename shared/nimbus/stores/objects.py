"""The S3 object store (and its SQS queues): datasets, the drop folder, reports, exports.

On AWS the endpoint is None and boto3 finds credentials as usual; locally the endpoint
is LocalStack or moto on port 4566 and any credentials do. Same code either way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from nimbus.config import Settings
from nimbus.errors import InvalidInput, StoreUnavailable
from nimbus.stores import Health
from nimbus.stores._base import PerProcess, timed_health

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class S3Uri:
    """``s3://bucket/key``: parsed once, formatted by ``str``. A key ending in ``/`` (or empty) is a folder."""

    bucket: str
    key: str = ""

    SCHEME = "s3://"

    @classmethod
    def is_s3(cls, text: str) -> bool:
        return text.startswith(cls.SCHEME)

    @classmethod
    def parse(cls, text: str) -> S3Uri:
        if not cls.is_s3(text):
            raise InvalidInput(f"{text!r} is not an S3 URI (expected s3://bucket/key)")
        bucket, _, key = text[len(cls.SCHEME):].partition("/")
        if not _BUCKET.fullmatch(bucket):
            raise InvalidInput(f"{text!r}: {bucket!r} is not a bucket name (3-63 lowercase letters, digits, '.', '-')")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"{self.SCHEME}{self.bucket}/{self.key}"

    def child(self, name: str) -> S3Uri:
        """The object or folder ``name`` inside this folder."""
        return S3Uri(self.bucket, self.folder + name.lstrip("/"))

    @property
    def folder(self) -> str:
        """The key as a folder prefix: everything under it, and not ``key-other/``."""
        return self.key if not self.key or self.key.endswith("/") else self.key + "/"


def aws_client(service: str, settings: Settings) -> Any:
    """A boto3 client for ``service`` at the configured endpoint, with short timeouts."""
    kwargs: dict[str, Any] = {
        "region_name": settings.aws_region,
        "config": Config(
            connect_timeout=settings.store_timeout_s,
            read_timeout=max(settings.store_timeout_s, 30),
            retries={"max_attempts": 2, "mode": "standard"},
        ),
    }
    if settings.aws_endpoint_url:
        kwargs["endpoint_url"] = settings.aws_endpoint_url
        # Emulators accept any credentials; don't make a laptop user configure some.
        if not os.environ.get("AWS_ACCESS_KEY_ID"):
            kwargs["aws_access_key_id"] = "test"
            kwargs["aws_secret_access_key"] = "test"
    return boto3.session.Session().client(service, **kwargs)


def _unreachable(store: str, url: str, exc: Exception) -> StoreUnavailable:
    if isinstance(exc, ClientError):
        reason = exc.response.get("Error", {}).get("Message") or str(exc)
    else:
        reason = str(exc).splitlines()[0] or type(exc).__name__
    return StoreUnavailable(store, url, reason)


class ObjectStore(PerProcess):
    """S3 buckets: data (datasets, drop folder) and artifacts (reports, exported models)."""

    name = "s3"

    def __init__(self, settings: Settings) -> None:
        self.url = settings.aws_endpoint_url or f"https://s3.{settings.aws_region}.amazonaws.com"
        self.data_bucket = settings.data_bucket
        self.artifacts_bucket = settings.artifacts_bucket
        self.client = aws_client("s3", settings)

    @classmethod
    def cache_key(cls, settings: Settings) -> tuple[str | None, str, str, str]:
        return (settings.aws_endpoint_url, settings.aws_region, settings.data_bucket, settings.artifacts_bucket)

    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectStore:
        return cls(settings)

    @contextmanager
    def _calling(self) -> Iterator[None]:
        """The one way this store calls S3: a boto error leaves as StoreUnavailable naming the endpoint."""
        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            raise _unreachable(self.name, self.url, exc) from exc

    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Write an object; returns its ETag."""
        with self._calling():
            answer = self.client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
        return answer["ETag"].strip('"')

    def get_bytes(self, bucket: str, key: str) -> bytes:
        with self._calling():
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        keys: list[str] = []
        with self._calling():
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys

    def etag(self, bucket: str, key: str) -> str:
        """The object's ETag (same bytes, same ETag)."""
        with self._calling():
            return self.client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')

    def download(self, bucket: str, key: str, path: str) -> None:
        """Copy one object to a local file (streamed, multipart for large objects)."""
        with self._calling():
            self.client.download_file(bucket, key, path)

    def upload(self, bucket: str, key: str, path: str, content_type: str | None = None) -> None:
        """Copy one local file to an object (streamed, multipart for large files)."""
        with self._calling():
            self.client.upload_file(path, bucket, key, ExtraArgs={"ContentType": content_type} if content_type else None)

    def content_type(self, bucket: str, key: str) -> str | None:
        with self._calling():
            return self.client.head_object(Bucket=bucket, Key=key).get("ContentType")

    def has_objects(self, bucket: str) -> bool:
        """True when ``bucket`` exists and holds at least one object."""
        with self._calling():
            if bucket not in self.bucket_names():
                return False
            return bool(self.client.list_objects_v2(Bucket=bucket, MaxKeys=1).get("KeyCount", 0))

    def ensure_bucket(self, bucket: str) -> None:
        if bucket not in self.bucket_names():
            with self._calling():
                self.client.create_bucket(Bucket=bucket)

    # -- everything under a folder --
    def list_under(self, folder: S3Uri) -> list[S3Uri]:
        """The objects under ``folder`` (its key taken as a folder), in key order."""
        return [S3Uri(folder.bucket, k) for k in sorted(self.list_keys(folder.bucket, folder.folder))]

    def delete_under(self, folder: S3Uri) -> int:
        """Delete every object under ``folder``; returns how many there were."""
        keys = self.list_keys(folder.bucket, folder.folder)
        for start in range(0, len(keys), 1000):  # S3 deletes at most 1000 keys per call
            with self._calling():
                answer = self.client.delete_objects(
                    Bucket=folder.bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]]})
            if answer.get("Errors"):
                error = answer["Errors"][0]
                raise StoreUnavailable(self.name, self.url, f"cannot delete {error.get('Key')}: "
                                                            f"{error.get('Message', error.get('Code'))}")
        return len(keys)

    def copy_under(self, source: S3Uri, target: S3Uri) -> int:
        """Copy every object under ``source`` to the same relative key under ``target``; returns the count."""
        keys = self.list_keys(source.bucket, source.folder)
        with self._calling():
            for k in keys:
                self.client.copy_object(Bucket=target.bucket, Key=target.folder + k[len(source.folder):],
                                        CopySource={"Bucket": source.bucket, "Key": k})
        return len(keys)

    def move_under(self, source: S3Uri, target: S3Uri) -> int:
        """Copy everything under ``source`` to ``target``, then delete the source; returns the count."""
        moved = self.copy_under(source, target)
        self.delete_under(source)
        return moved

    def bucket_names(self) -> set[str]:
        """The buckets there are; raises StoreUnavailable when the endpoint does not answer."""
        with self._calling():
            return {b["Name"] for b in self.client.list_buckets().get("Buckets", [])}

    def ping(self) -> Health:
        """Health of the endpoint alone (buckets may not exist yet)."""
        return timed_health(self.name, self.url, lambda: {"buckets": str(len(self.bucket_names()))})

    def health(self) -> Health:
        def probe() -> dict[str, str]:
            names = self.bucket_names()
            missing = [b for b in (self.data_bucket, self.artifacts_bucket) if b not in names]
            if missing:
                raise RuntimeError(f"bucket(s) missing: {', '.join(missing)} (run `nimbus local up`)")
            return {"buckets": ",".join(sorted(names))}

        return timed_health(self.name, self.url, probe)


class QueueStore:
    """An SQS queue that carries drop-folder notifications (S3 -> SQS -> batch): the gateway's
    (``drop_queue``, the default) or Airflow's (``airflow_queue``)."""

    name = "sqs"

    def __init__(self, settings: Settings, queue: str | None = None) -> None:
        self.url = settings.aws_endpoint_url or f"https://sqs.{settings.aws_region}.amazonaws.com"
        self.queue_name = queue or settings.drop_queue
        self.client = aws_client("sqs", settings)
        self._queue_url: str | None = None

    @property
    def queue_url(self) -> str:
        if self._queue_url is None:
            try:
                self._queue_url = self.client.get_queue_url(QueueName=self.queue_name)["QueueUrl"]
            except (BotoCoreError, ClientError) as exc:
                raise _unreachable(self.name, self.url, exc) from exc
        return self._queue_url

    def receive(self, max_messages: int = 10, wait_s: int = 1) -> list[dict[str, Any]]:
        try:
            answer = self.client.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=max_messages,
                WaitTimeSeconds=wait_s,
                AttributeNames=["All"],
            )
        except (BotoCoreError, ClientError) as exc:
            raise _unreachable(self.name, self.url, exc) from exc
        return answer.get("Messages", [])

    def delete(self, receipt_handle: str) -> None:
        self.client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=receipt_handle)

    def retry_later(self, receipt_handle: str, after_s: int) -> None:
        """Hide a received message for ``after_s`` seconds, then deliver it again."""
        self.client.change_message_visibility(QueueUrl=self.queue_url, ReceiptHandle=receipt_handle,
                                              VisibilityTimeout=after_s)

    def health(self) -> Health:
        return timed_health(self.name, self.url, lambda: {"queue": self.queue_url.rsplit("/", 1)[-1]})
