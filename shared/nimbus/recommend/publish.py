"""Put an interaction log and catalogue where the feature pipeline reads them."""

from __future__ import annotations

import io
from pathlib import Path

from nimbus.config import Settings
from nimbus.recommend.data import Dataset
from nimbus.stores.objects import ObjectStore


def _parquet(frame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def write_dataset(dataset: Dataset, settings: Settings, out_dir: str | None = None, name: str = "part-0000") -> str:
    """Write Parquet files to ``out_dir``, or to the data bucket's logs prefix; returns where."""
    if out_dir:
        folder = Path(out_dir)
        (folder / "interactions").mkdir(parents=True, exist_ok=True)
        dataset.interactions.to_parquet(folder / "interactions" / f"{name}.parquet", index=False)
        dataset.catalogue.to_parquet(folder / "catalogue.parquet", index=False)
        return str(folder)
    store = ObjectStore.for_settings(settings)
    store.put_bytes(settings.data_bucket, f"{settings.interactions_prefix}{name}.parquet", _parquet(dataset.interactions))
    store.put_bytes(settings.data_bucket, settings.catalogue_key, _parquet(dataset.catalogue))
    return f"s3://{settings.data_bucket}/{settings.interactions_prefix}"
