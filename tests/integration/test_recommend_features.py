"""Batch and real-time features against the real Redis."""

from __future__ import annotations

import numpy as np
import pytest

from nimbus.config import Settings
from nimbus.recommend.featurize import compute_features
from nimbus.recommend.pipeline import publish_features, refresh_features
from nimbus.recommend.publish import write_dataset
from nimbus.recommend.ranking import ItemTable, user_context
from nimbus.stores.redis.features import FeatureStore, RealtimeEvent
from nimbus.stores.redis.keys import Keys

pytestmark = pytest.mark.integration


def test_a_published_version_reads_back_as_computed(clean_stack: Settings, recommender_models: dict) -> None:
    store = FeatureStore.for_settings(clean_stack)
    fs = recommender_models["features"]
    result = publish_features(store, fs)
    assert result["users"] == len(fs.user_ids) and store.current_feature_version() == fs.version
    items = ItemTable.from_bytes(store.items_blob(fs.version))
    user = str(fs.user_ids[3])
    blob, counts, recent = store.read_user(fs.version, user, 20)
    served = user_context(items, blob, recent, counts)
    direct = user_context(fs.items, fs.user_blob(3))
    np.testing.assert_array_equal(served.recent, direct.recent)
    np.testing.assert_allclose(served.emb, direct.emb)
    assert store.feature_meta(fs.version)["users"] == len(fs.user_ids)


def test_readers_see_the_old_version_until_the_pointer_swaps(clean_stack: Settings, recommender_models: dict) -> None:
    store = FeatureStore.for_settings(clean_stack)
    first = recommender_models["features"]
    publish_features(store, first)
    second = compute_features(recommender_models["dataset"], version="second")
    users = ((str(u), second.user_blob(r)) for r, u in enumerate(second.user_ids))
    store.write_feature_set("second", second.items.to_bytes(), users, {})
    assert store.current_feature_version() == first.version  # written, not yet visible
    assert store.swap_feature_version("second") == first.version
    assert store.current_feature_version() == "second"
    with pytest.raises(ValueError, match="incomplete"):
        store.swap_feature_version("never-written")


def test_old_versions_are_pruned_but_the_previous_one_is_kept(clean_stack: Settings, recommender_models: dict) -> None:
    store = FeatureStore.for_settings(clean_stack)
    dataset = recommender_models["dataset"]
    versions = []
    for name in ("v-a", "v-b", "v-c"):
        result = publish_features(store, compute_features(dataset, version=name))
        versions.append(result["version"])
    assert result["pruned"] == ["v-a"]
    assert not list(store.client.scan_iter(match=Keys.fs_pattern("v-a")))
    assert store.items_blob("v-b") is not None and store.current_feature_version() == "v-c"


def test_real_time_events_update_recent_items_and_counts_once(clean_stack: Settings) -> None:
    store = FeatureStore.for_settings(clean_stack)
    events = [
        RealtimeEvent("e1", "alice", "i1", "shoes", 1.0, 100.0),
        RealtimeEvent("e2", "alice", "i2", "shoes", 3.0, 200.0),
        RealtimeEvent("e3", "alice", "i1", "", 5.0, 150.0),  # unknown category; older timestamp
    ]
    assert store.apply_events(events, recent_n=20) == 3
    assert store.apply_events(events, recent_n=20) == 0  # the same ids again: nothing changes
    counts, recent = store.realtime("alice", 20)
    assert recent == ["i1", "i2"]  # newest arrival first, no duplicates
    assert float(counts["c:shoes"]) == 4.0 and counts["n"] == "3" and float(counts["last_ts"]) == 200.0
    assert 0 < store.client.ttl(Keys.rt_user("alice")) <= FeatureStore.RT_TTL_S


def test_recent_items_are_capped(clean_stack: Settings) -> None:
    store = FeatureStore.for_settings(clean_stack)
    store.apply_events([RealtimeEvent(f"x{n}", "bob", f"i{n}", "", 1.0, n) for n in range(30)], recent_n=5)
    assert store.realtime("bob", 50)[1] == ["i29", "i28", "i27", "i26", "i25"]


def test_the_scheduled_refresh_reads_logs_from_s3_and_swaps(clean_stack: Settings, recommender_models: dict) -> None:
    write_dataset(recommender_models["dataset"], clean_stack)
    result = refresh_features(clean_stack)
    store = FeatureStore.for_settings(clean_stack)
    assert store.current_feature_version() == result["version"]
    assert result["users"] == recommender_models["dataset"].interactions["user_id"].nunique()
    assert result["events"] == len(recommender_models["dataset"].interactions)
