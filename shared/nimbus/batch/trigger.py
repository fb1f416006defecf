"""What starts a batch run: a file in the drop folder (S3 notification) or a schedule (every
file in the drop folder not yet scored)."""

from __future__ import annotations

from typing import Any

from nimbus import logs, tracing
from nimbus.batch.io import UnsafeKey
from nimbus.batch.job import BatchFailed, RunRequest, run_batch
from nimbus.config import Settings
from nimbus.errors import InvalidInput
from nimbus.events import NimbusEvent, ObjectsCreated, ScheduledTrigger
from nimbus.stores.objects import ObjectStore, S3Uri


def pending_files(settings: Settings) -> list[str]:
    """Files in the drop folder that no run has scored yet, oldest key first."""
    from nimbus.batch.io import FsConfig, UnsafeKey, etag_fingerprints, list_inputs
    from nimbus.batch.job import run_key_for
    from nimbus.stores.documents import Collections, DocumentStore

    keys = ObjectStore.for_settings(settings).list_keys(settings.data_bucket, settings.drop_prefix)
    runs = DocumentStore.for_settings(settings).collection(Collections.BATCH_RUNS)
    fs = FsConfig.from_settings(settings)
    pending = []
    for key in sorted(k for k in keys if k.endswith((".csv", ".csv.gz", ".parquet"))):
        uri = str(S3Uri(settings.data_bucket, key))
        try:
            files = list_inputs(fs, uri)
        except UnsafeKey:
            pending.append(uri)  # refused (and reported) by handle, without stopping the sweep
            continue
        run = runs.find_one({"_id": run_key_for(etag_fingerprints(settings, files))}, {"status": 1})
        if run is None or run.get("status") not in ("succeeded", "failed"):
            pending.append(uri)
    return pending


def handle(event: NimbusEvent, settings: Settings) -> list[dict[str, Any]]:
    logs.configure(settings)  # the function's job-step lines (once per process)
    tracing.configure()  # its spans, when OTEL_* asks for them
    if isinstance(event, ObjectsCreated):
        uris = [str(S3Uri(o.bucket, o.key)) for o in event.objects]
    elif isinstance(event, ScheduledTrigger):
        uris = pending_files(settings)
    else:
        raise InvalidInput(f"batch runs on a drop-folder file or a schedule; got {type(event).__name__}")
    results = []
    with tracing.attached(event.trace):  # the event's W3C context, when it carried one (CloudEvents)
        for uri in uris:
            try:
                results.append(run_batch(settings, RunRequest.from_settings(settings, uri, actor="drop-folder"))
                               .as_dict())
            except (BatchFailed, UnsafeKey) as exc:  # refused input: reported (and audited when run), not retried
                results.append({"input": uri, "status": "failed", "message": str(exc)})
    return results
