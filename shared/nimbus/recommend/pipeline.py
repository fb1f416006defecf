"""The batch feature pipeline: logs in S3 -> features -> a new Redis version -> one swap.

Every key of the new version is written before the pointer moves, so a reader sees the
old set or the new set, never a mix; the previous version is kept (for requests in
flight and for rollback) and older ones are deleted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from nimbus.config import Settings
from nimbus.recommend.data import load_dataset
from nimbus.recommend.featurize import compute_features
from nimbus.recommend.ranking import FeatureSet
from nimbus.stores.objects import ObjectStore
from nimbus.stores.redis.features import FeatureStore

log = logging.getLogger("nimbus.recommend.pipeline")


def publish_features(store: FeatureStore, fs: FeatureSet, keep: int = 2) -> dict[str, Any]:
    """Write ``fs`` as a new version, swap the pointer to it, prune old versions."""
    meta = {"created_at": time.time(), "items": fs.items.n_items, "categories": fs.items.n_categories,
            "dim": fs.items.dim}
    users = ((str(user), fs.user_blob(row)) for row, user in enumerate(fs.user_ids))
    count = store.write_feature_set(fs.version, fs.items.to_bytes(), users, meta)
    previous = store.swap_feature_version(fs.version)
    pruned = store.prune_feature_versions(keep=keep)
    return {"version": fs.version, "previous": previous, "users": count, "items": fs.items.n_items, "pruned": pruned}


def default_sources(settings: Settings) -> tuple[str, str | None]:
    """The logs prefix and, when it exists, the catalogue, in the data bucket."""
    logs = f"s3://{settings.data_bucket}/{settings.interactions_prefix}"
    objects = ObjectStore.for_settings(settings)
    has_catalogue = settings.catalogue_key in objects.list_keys(settings.data_bucket, settings.catalogue_key)
    return logs, f"s3://{settings.data_bucket}/{settings.catalogue_key}" if has_catalogue else None


def refresh_features(
    settings: Settings,
    interactions: str | None = None,
    catalogue: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Recompute batch features from the logs and swap them in; also re-sync live model aliases."""
    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    if interactions is None:
        interactions, default_catalogue = default_sources(settings)
        catalogue = catalogue or default_catalogue
    say(f"reading {interactions}")
    dataset = load_dataset(interactions, catalogue)
    say(f"computing features from {len(dataset.interactions):,} events")
    fs = compute_features(dataset)
    say(f"writing feature version {fs.version} ({len(fs.user_ids):,} users)")
    result = publish_features(FeatureStore.for_settings(settings), fs)
    result["events"] = len(dataset.interactions)
    result["seconds"] = round(time.perf_counter() - start, 2)
    try:
        from nimbus.recommend.models import sync_live

        result["models_synced"] = sync_live(settings)
    except Exception as exc:  # noqa: BLE001 - the features are in; a registry hiccup is reported, not fatal
        log.warning("live model sync skipped: %s", exc)
        result["models_synced"] = f"skipped: {exc}"
    return result
