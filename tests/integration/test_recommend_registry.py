"""Training results in the real MLflow registry, and their live projection in Redis."""

from __future__ import annotations

import pytest

from nimbus.config import Settings
from nimbus.errors import NotFound
from nimbus.recommend.bundle import MODEL_NAME
from nimbus.recommend.models import load_bundle, promote_version, sync_live
from nimbus.stores.redis.live import LiveModelStore
from nimbus.stores.registry import Registry

pytestmark = pytest.mark.integration


def test_a_registered_version_carries_its_metrics_and_serving_bundle(stack_settings: Settings,
                                                                      recommender_models: dict) -> None:
    version = recommender_models["versions"][0]
    client = Registry.for_settings(stack_settings).client
    mv = client.get_model_version(MODEL_NAME, version)
    run = client.get_run(mv.run_id)
    metrics = recommender_models["result"].metrics
    assert run.data.metrics["recall_at_10"] == pytest.approx(metrics["recall_at_10"])
    assert run.data.metrics["popular_recall_at_10"] == pytest.approx(metrics["popular_recall_at_10"])
    bundle = load_bundle(stack_settings, version)
    assert bundle.version == version and len(bundle.popular) == 100


def test_promotion_moves_the_alias_and_publishes_live(clean_stack: Settings, recommender_models: dict) -> None:
    first, second = recommender_models["versions"]
    promote_version(clean_stack, second)
    client = Registry.for_settings(clean_stack).client
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == second
    store = LiveModelStore.for_settings(clean_stack)
    assert store.live(MODEL_NAME) == {"champion": second}
    assert store.get_model(MODEL_NAME, second) is not None
    promote_version(clean_stack, first)  # and back: a rollback is a promotion of the older version
    assert store.live(MODEL_NAME) == {"champion": first}


def test_an_alias_moved_in_mlflow_is_synced_to_redis(clean_stack: Settings, recommender_models: dict) -> None:
    _first, second = recommender_models["versions"]
    Registry.for_settings(clean_stack).client.set_registered_model_alias(MODEL_NAME, "challenger", second)
    try:
        changed = sync_live(clean_stack)
        assert changed.get("challenger") == second
        assert LiveModelStore.for_settings(clean_stack).live(MODEL_NAME)["challenger"] == second
    finally:
        Registry.for_settings(clean_stack).client.delete_registered_model_alias(MODEL_NAME, "challenger")


def test_promoting_a_version_that_does_not_exist_is_a_clear_error(clean_stack: Settings,
                                                                   recommender_models: dict) -> None:
    with pytest.raises(NotFound, match=f"{MODEL_NAME} has no version '999'"):
        promote_version(clean_stack, "999")
    assert LiveModelStore.for_settings(clean_stack).live(MODEL_NAME) == {}
