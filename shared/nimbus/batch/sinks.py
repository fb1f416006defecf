"""Where a batch run's results go: Parquet in S3 and documents in MongoDB.

Parquet: each scoring task writes its parts under the run's staging folder; ``ParquetSink.commit``
moves them to ``results/`` and ``quarantine/`` as a whole, so a failed or retried run never
leaves half its output there. MongoDB: one Spark task per committed part inserts its records with
a deterministic ``_id`` (run key and record id), so a retried task skips what it already wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nimbus.batch.io import FsConfig, read_parquet
from nimbus.config import Settings
from nimbus.stores.documents import Collections, DocumentStore
from nimbus.stores.objects import ObjectStore, S3Uri

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

MONGO_CHUNK = 5000  # documents per insert


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


class ParquetSink:
    """Staged parts committed to the run's results and quarantine folders."""

    def __init__(self, settings: Settings) -> None:
        self.store = ObjectStore.for_settings(settings)

    def clear_staging(self, folders: RunFolders) -> None:
        """Drop a previous attempt's parts: they must not mix with this attempt's."""
        self.store.delete_under(folders.staging)

    def commit(self, folders: RunFolders) -> dict[str, int]:
        """Replace the run's results and quarantine by the staged parts; returns parts moved per folder."""
        self.store.delete_under(folders.results)
        self.store.delete_under(folders.quarantine)
        return {"results": self.store.move_under(folders.staging.child("scored/"), folders.results),
                "quarantine": self.store.move_under(folders.staging.child("quarantine/"), folders.quarantine)}

    def result_parts(self, folders: RunFolders) -> list[S3Uri]:
        return self.store.list_under(folders.results)


def write_mongodb(spark: SparkSession, settings: Settings, parts: list[S3Uri], id_column: str,
                  models: dict[str, str]) -> dict[str, int]:
    """One Spark task per scored part inserts its records into ``batch_predictions``."""
    fs = FsConfig.from_settings(settings)
    uris = [str(p) for p in parts]
    from nimbus.batch.spark import map_items

    counts = map_items(spark, uris, lambda items: [insert_part(u, settings, fs, id_column, models) for u in items])
    return {"inserted": sum(c[0] for c in counts), "duplicates": sum(c[1] for c in counts)}


def insert_part(uri: str, settings: Settings, fs_config: FsConfig, id_column: str, models: dict[str, str],
                chunk: int = MONGO_CHUNK) -> tuple[int, int]:
    """Runs in a Spark task: insert one scored part; returns (inserted, duplicates skipped)."""
    table = read_parquet(fs_config, uri)
    ids = table.column(id_column).to_pylist()
    run_key = table.column("run_key")[0].as_py() if table.num_rows else ""
    scores = {name: table.column(f"score__{name}").to_numpy() for name in models}
    documents = DocumentStore.for_settings(settings)
    inserted = duplicates = 0
    for start in range(0, len(ids), chunk):
        docs: list[dict[str, Any]] = [
            {"_id": f"{run_key}:{rid}", "run_key": run_key, "record_id": rid,
             "scores": {name: float(scores[name][k]) for name in models}, "versions": models}
            for k, rid in enumerate(ids[start:start + chunk], start)]
        new, dup = documents.insert_new(Collections.BATCH_PREDICTIONS, docs)
        inserted += new
        duplicates += dup
    return inserted, duplicates
