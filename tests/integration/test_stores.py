"""Each store adapter against its real backend, and against a URL where nothing listens."""

from __future__ import annotations

import pytest

from nimbus.config import Settings
from nimbus.errors import StoreUnavailable
from nimbus.local.stack import free_port
from nimbus.stores.documents import Collections, DocumentStore
from nimbus.stores.objects import ObjectStore
from nimbus.stores.redis.base import RedisStore
from nimbus.stores.redis.experiments import ExperimentStore
from nimbus.stores.redis.features import FeatureStore, RealtimeEvent
from nimbus.stores.redis.keys import Keys, ServedRow
from nimbus.stores.redis.live import LiveModelStore
from nimbus.stores.redis.telemetry import TelemetryStore
from nimbus.stores.registry import Registry

pytestmark = pytest.mark.integration


def dead(settings: Settings, **changes: object) -> Settings:
    return settings.model_copy(update={"store_timeout_s": 0.5, **changes})


def test_feature_store_round_trips_and_reuses_its_pool(clean_stack: Settings) -> None:
    store = FeatureStore.for_settings(clean_stack)
    assert FeatureStore.for_settings(clean_stack) is store  # warm invocations reuse the connection
    # every Redis store of this URL shares one client, so one connection pool
    others = [cls.for_settings(clean_stack) for cls in (LiveModelStore, ExperimentStore, TelemetryStore, RedisStore)]
    assert all(other.client is store.client for other in others)
    store.client.set(Keys.key("probe", 1), b"x")
    assert store.client.get("nimbus:v2:probe:1") == b"x"
    health = store.health()
    assert health.up and health.info["version"]


def test_unreachable_redis_names_its_url(clean_stack: Settings) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    store = FeatureStore(url, timeout_s=0.5)
    with pytest.raises(StoreUnavailable, match=f"redis at {url} is unreachable"):
        store.ping()
    health = store.health()
    assert not health.up and health.url == url and health.detail


# One call of each Redis store, each a different path through redis-py: plain commands, pipelines,
# Lua scripts, the request path's hand-written round trip, and pub/sub.
REDIS_CALLS = {
    "ping": lambda url: RedisStore(url, 0.5).ping(),
    "publish": lambda url: RedisStore(url, 0.5).publish("model", "x"),
    "subscribe": lambda url: next(RedisStore(url, 0.5).subscribe("model")),
    "current_feature_version": lambda url: FeatureStore(url, 0.5).current_feature_version(),
    "read_user": lambda url: FeatureStore(url, 0.5).read_user("v1", "alice", 20),
    "apply_events": lambda url: FeatureStore(url, 0.5).apply_events([RealtimeEvent("e", "u", "i", "", 1.0, 1.0)], 20),
    "write_feature_set": lambda url: FeatureStore(url, 0.5).write_feature_set("v1", b"x", [("u", b"y")], {}),
    "live": lambda url: LiveModelStore(url, 0.5).live("m"),
    "set_live": lambda url: LiveModelStore(url, 0.5).set_live("m", "champion", "1"),
    "push_samples": lambda url: LiveModelStore(url, 0.5).push_samples("m", [b"{}"]),
    "running_experiments": lambda url: ExperimentStore(url, 0.5).running_experiments(),
    "record_served": lambda url: ExperimentStore(url, 0.5).record_served(
        [ServedRow("r", "u", "e", "v", "1", ("i",), 1.0, None)], 60, 60, 60),
    "perf_buckets": lambda url: ExperimentStore(url, 0.5).perf_buckets([60]),
    "add_traffic": lambda url: TelemetryStore(url, 0.5).add_traffic({("f", 10): {"n": 1}}, 60),
    "traffic_functions": lambda url: TelemetryStore(url, 0.5).traffic_functions(),
}


@pytest.mark.parametrize("call", sorted(REDIS_CALLS))
def test_every_redis_store_call_turns_an_unreachable_redis_into_store_unavailable(call: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(StoreUnavailable, match=f"redis at {url} is unreachable") as caught:
        REDIS_CALLS[call](url)
    assert caught.value.store == "redis" and caught.value.url == url


def test_a_redis_that_answers_too_slowly_is_unavailable_too(clean_stack: Settings) -> None:
    """The request path's short timeout: an answer that takes longer than it is StoreUnavailable."""
    store = FeatureStore(clean_stack.redis_url, timeout_s=0.2)
    with pytest.raises(StoreUnavailable, match="unreachable: Timeout"), store.redis as r:
        r.blpop([Keys.key("probe", "never-filled")], timeout=2)  # Redis holds the answer 2 s; the socket waits 0.2 s
    assert store.current_feature_version() is None  # the pool is fine afterwards


def test_redis_passwords_never_reach_messages() -> None:
    url = f"redis://user:hunter2@127.0.0.1:{free_port()}/0"
    with pytest.raises(StoreUnavailable) as caught:
        FeatureStore(url, timeout_s=0.5).ping()
    assert "hunter2" not in str(caught.value) and "user:***@" in str(caught.value)


def test_document_store_creates_indexes_and_answers_health(clean_stack: Settings) -> None:
    store = DocumentStore.for_settings(clean_stack)
    store.ensure_indexes()
    names = {ix["name"] for ix in store.collection(Collections.AUDIT).list_indexes()}
    assert "at_-1" in names and "subject_1_at_-1" in names
    store.collection(Collections.AUDIT).insert_one({"subject": "probe", "at": 1})
    assert store.collection(Collections.AUDIT).count_documents({"subject": "probe"}) == 1
    assert store.health().up


def test_unreachable_mongodb_names_its_url() -> None:
    url = f"mongodb://127.0.0.1:{free_port()}/"
    store = DocumentStore(url, "nimbus", timeout_s=0.5)
    with pytest.raises(StoreUnavailable, match=f"mongodb at {url} is unreachable"):
        store.ping()
    assert not store.health().up


def test_object_store_writes_lists_and_reads(clean_stack: Settings) -> None:
    store = ObjectStore.for_settings(clean_stack)
    etag = store.put_bytes(clean_stack.artifacts_bucket, "reports/a b.json", b'{"a": 1}', "application/json")
    assert etag
    assert store.list_keys(clean_stack.artifacts_bucket, "reports/") == ["reports/a b.json"]
    assert store.get_bytes(clean_stack.artifacts_bucket, "reports/a b.json") == b'{"a": 1}'
    assert store.health().up


def test_object_store_health_names_missing_buckets(clean_stack: Settings) -> None:
    store = ObjectStore(clean_stack.model_copy(update={"data_bucket": "no-such-bucket"}))
    health = store.health()
    assert not health.up and "no-such-bucket" in health.detail


def test_unreachable_s3_names_its_endpoint(clean_stack: Settings) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = ObjectStore(dead(clean_stack, aws_endpoint_url=endpoint))
    with pytest.raises(StoreUnavailable, match=f"s3 at {endpoint} is unreachable"):
        store.get_bytes("nimbus-data", "x")
    assert not store.health().up


def test_registry_answers_through_the_mlflow_server(clean_stack: Settings) -> None:
    registry = Registry.for_settings(clean_stack)
    assert registry.is_server
    assert registry.health().up
    experiment_id = registry.client.create_experiment("nimbus-probe-experiment")
    assert registry.client.get_experiment(experiment_id).name == "nimbus-probe-experiment"
    registry.client.delete_experiment(experiment_id)


def test_registry_on_sqlite_needs_no_server(tmp_path) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}", 30)
    assert not registry.is_server
    health = registry.health()
    assert health.up, health.detail


def test_unreachable_mlflow_names_its_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StoreUnavailable, match=f"mlflow at {url} is unreachable"):
        Registry(url, url, 0.5).ping()
