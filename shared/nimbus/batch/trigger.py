"""What starts a batch run: a file in the drop folder (S3 notification) or a schedule (every
file in the drop folder not yet scored)."""

from __future__ import annotations

from typing import Any

from nimbus.batch.job import BatchFailed, RunRequest, run_batch
from nimbus.config import Settings
from nimbus.events import NimbusEvent, ObjectsCreated, ScheduledTrigger
from nimbus.errors import InvalidInput
from nimbus.stores.objects import ObjectStore


def _request(settings: Settings, uri: str) -> RunRequest:
    return RunRequest(uri, settings.batch_models, settings.batch_schema, tuple(settings.batch_sinks.split(",")),
                      actor="drop-folder")


def handle(event: NimbusEvent, settings: Settings) -> list[dict[str, Any]]:
    if isinstance(event, ObjectsCreated):
        uris = [f"s3://{o.bucket}/{o.key}" for o in event.objects]
    elif isinstance(event, ScheduledTrigger):
        keys = ObjectStore.for_settings(settings).list_keys(settings.data_bucket, settings.drop_prefix)
        uris = [f"s3://{settings.data_bucket}/{k}" for k in keys if k.endswith((".csv", ".csv.gz", ".parquet"))]
    else:
        raise InvalidInput(f"batch runs on a drop-folder file or a schedule; got {type(event).__name__}")
    results = []
    for uri in uris:
        try:
            results.append(run_batch(settings, _request(settings, uri)).as_dict())
        except BatchFailed as exc:  # refused input: reported and audited, not retried
            results.append({"input": uri, "status": "failed", "message": str(exc)})
    return results
