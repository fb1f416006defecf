"""Where a batch run's results go: Parquet in S3 and documents in MongoDB.

Parquet: each scoring task writes its parts under the run's staging folder, and the run records which
parts it staged (its manifest). MongoDB is written first, from the staged parts: one Spark task per part
inserts its records in blocks of ``BLOCK`` (the bucket pattern: one document per block, with its record ids,
one list of scores per model, and a multikey index on the record ids for the lookup of one record,
``prediction``); a block's ``_id`` is deterministic (run key, part, block), so a retried task or a rerun
skips what it already wrote. Then ``ParquetSink.commit`` copies the staged parts into ``results/`` and
``quarantine/``, drops what the manifest does not name, and clears staging: a run that fails or is killed
before the commit leaves nothing under ``results/``, and a commit interrupted anywhere is finished by
running it again (a retried Airflow ``write`` task), never half-done nor emptied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nimbus.batch.io import FsConfig, read_parquet
from nimbus.config import Settings
from nimbus.stores.documents import Collections, DocumentStore, mongo_reason
from nimbus.stores.objects import ObjectStore, S3Uri

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

MONGO_CHUNK = 20_000  # records per bulk insert (of blocks)
BLOCK = 1000  # records per predictions document (the bucket pattern: ~10x fewer documents to write and index)
RERUN = "the run is not marked done; run it again once MongoDB is back (every record is then written once)"


@dataclass(frozen=True)
class RunFolders:
    """One run's folders in the artifacts bucket."""

    staging: S3Uri
    results: S3Uri
    quarantine: S3Uri

    @classmethod
    def of(cls, settings: Settings, key: str) -> RunFolders:
        base = S3Uri(settings.artifacts_bucket, "batch/")
        return cls(base.child(f"staging/{key}/"), base.child(f"results/{key}/"), base.child(f"quarantine/{key}/"))

    def scored_part(self, index: int) -> S3Uri:
        return self.staging.child(f"scored/part-{index:05d}.parquet")

    def quarantine_part(self, index: int) -> S3Uri:
        return self.staging.child(f"quarantine/part-{index:05d}.parquet")


Manifest = dict[str, list[str]]  # staged part names: {"scored": [...], "quarantine": [...]}
KINDS = {"scored": "results", "quarantine": "quarantine"}  # staging subfolder -> committed folder


class ParquetSink:
    """Staged parts committed to the run's results and quarantine folders."""

    def __init__(self, settings: Settings) -> None:
        self.store = ObjectStore.for_settings(settings)

    def clear_staging(self, folders: RunFolders) -> None:
        """Drop a previous attempt's parts: they must not mix with this attempt's."""
        self.store.delete_under(folders.staging)

    def staged(self, folders: RunFolders) -> Manifest:
        """The names of the parts staged now, by kind: the run's manifest once scoring is done."""
        return {kind: [u.key.rsplit("/", 1)[-1] for u in self.store.list_under(folders.staging.child(f"{kind}/"))]
                for kind in KINDS}

    def scored_parts(self, folders: RunFolders, manifest: Manifest) -> list[S3Uri]:
        """Where each scored part of the manifest is now: staged, or already committed."""
        staged = set(self.staged(folders)["scored"])
        return [folders.staging.child(f"scored/{n}") if n in staged else folders.results.child(n)
                for n in manifest["scored"]]

    def commit(self, folders: RunFolders, manifest: Manifest) -> dict[str, int]:
        """Make the run's results and quarantine exactly the manifest's parts; returns parts per folder.

        Idempotent: copy what is staged (over an earlier attempt's part of the same name), check every part
        the manifest names is there, drop any other part, then clear staging."""
        from nimbus.errors import NimbusError

        counts = {}
        for kind, folder in KINDS.items():
            target = getattr(folders, folder)
            self.store.copy_under(folders.staging.child(f"{kind}/"), target)
            there = {u.key.rsplit("/", 1)[-1]: u for u in self.store.list_under(target)}
            missing = sorted(set(manifest[kind]) - set(there))
            if missing:
                raise NimbusError(f"staged {kind} part(s) {', '.join(missing[:3])} are gone: rerun the batch")
            for name, uri in there.items():
                if name not in manifest[kind]:
                    self.store.client.delete_object(Bucket=uri.bucket, Key=uri.key)
            counts[folder] = len(manifest[kind])
        self.clear_staging(folders)
        return counts


def write_mongodb(spark: SparkSession, settings: Settings, parts: list[S3Uri], id_column: str,
                  models: dict[str, str]) -> dict[str, int]:
    """One Spark task per scored part inserts its records into ``batch_predictions``, in blocks.

    A task that loses MongoDB reports why instead of failing (Spark would wrap the reason in a traceback, and
    retry a task whose store is down); the driver raises it once, as a one-line StoreUnavailable."""
    from nimbus.batch.spark import map_items
    from nimbus.errors import StoreUnavailable
    from nimbus.stores._base import redact

    fs = FsConfig.from_settings(settings)
    uris = [str(p) for p in parts]
    counts = map_items(spark, uris, lambda items: [insert_part(u, settings, fs, id_column, models) for u in items])
    lost = [c[2] for c in counts if c[2]]
    if lost:
        raise StoreUnavailable("mongodb", redact(settings.mongo_url), lost[0], RERUN)
    return {"inserted": sum(c[0] for c in counts), "duplicates": sum(c[1] for c in counts)}


def insert_part(uri: str, settings: Settings, fs_config: FsConfig, id_column: str, models: dict[str, str],
                chunk: int = MONGO_CHUNK, block: int = BLOCK) -> tuple[int, int, str]:
    """Runs in a Spark task: insert one scored part as documents of ``block`` records each; returns (records
    inserted, records skipped because their block was already there, why MongoDB was lost or "").

    A block's ``_id`` is the run key, the part and the block's place in it: the same input gives the same parts
    in the same order, so a retried task or a rerun skips the blocks it wrote (each is inserted whole or not at
    all) and every record is in MongoDB once."""
    from pymongo.errors import BulkWriteError, PyMongoError

    table = read_parquet(fs_config, uri)
    ids = table.column(id_column).to_pylist()
    run_key = table.column("run_key")[0].as_py() if table.num_rows else ""
    part = uri.rsplit("/", 1)[-1].split(".")[0]
    scores = {name: table.column(f"score__{name}").to_numpy().tolist() for name in models}
    blocks: list[dict[str, Any]] = [
        {"_id": f"{run_key}:{part}:{b // block:05d}", "run_key": run_key, "n": len(ids[b:b + block]),
         "record_ids": ids[b:b + block], "scores": {name: s[b:b + block] for name, s in scores.items()},
         "versions": models}
        for b in range(0, len(ids), block)]
    documents = DocumentStore.for_settings(settings)
    inserted = duplicates = 0
    per_insert = max(chunk // block, 1)
    for start in range(0, len(blocks), per_insert):
        docs = blocks[start:start + per_insert]
        try:
            skipped = documents.insert_skipping(Collections.BATCH_PREDICTIONS, docs)
        except BulkWriteError:
            raise  # MongoDB answered and refused a block: a bug, not an outage
        except PyMongoError as exc:
            return inserted, duplicates, mongo_reason(exc)
        dup = sum(docs[i]["n"] for i in skipped)
        inserted += sum(d["n"] for d in docs) - dup
        duplicates += dup
    return inserted, duplicates, ""


def prediction(settings: Settings, run_key: str, record_id: str) -> dict[str, Any] | None:
    """One record's predictions in a run: ``{"run_key", "record_id", "scores": {model: score}, "versions"}``,
    or None. Found through the multikey index on the blocks' record ids; a run written before blocks (one
    document per record, ``_id`` = ``run:record``) is read too."""
    predictions = DocumentStore.for_settings(settings).collection(Collections.BATCH_PREDICTIONS)
    doc = predictions.find_one({"run_key": run_key, "record_ids": record_id})
    if doc is None:
        old = predictions.find_one({"_id": f"{run_key}:{record_id}"})
        return None if old is None else {k: old[k] for k in ("run_key", "record_id", "scores", "versions")}
    k = doc["record_ids"].index(record_id)
    return {"run_key": run_key, "record_id": record_id, "scores": {m: s[k] for m, s in doc["scores"].items()},
            "versions": doc["versions"]}


def predicted_ids(settings: Settings, run_key: str | None = None) -> list[str]:
    """The record ids MongoDB holds predictions for, in a run (or in all runs), once per prediction stored."""
    predictions = DocumentStore.for_settings(settings).collection(Collections.BATCH_PREDICTIONS)
    ids: list[str] = []
    for doc in predictions.find({} if run_key is None else {"run_key": run_key}, {"record_ids": 1, "record_id": 1}):
        ids.extend(doc["record_ids"] if "record_ids" in doc else [doc["record_id"]])
    return ids
