"""Nimbus on a real 3-master Redis Cluster (the ``redis_cluster`` fixture): serving, events,
experiments, live-model pub/sub and the feature refresh, with MongoDB, S3 and MLflow from the
session's stack. A cluster refuses (CROSSSLOT) any script or transaction whose keys span slots,
so these paths fail here unless every multi-key call keeps to one slot or is split per slot."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest
from fastapi.testclient import TestClient
from redis.crc import key_slot

from nimbus.api.events import create_events_app
from nimbus.api.experiments import create_experiments_app
from nimbus.api.recommend import create_recommend_app
from nimbus.config import Settings, get_settings
from nimbus.recommend.live import LiveModels
from nimbus.recommend.models import promote_version
from nimbus.recommend.pipeline import publish_features, refresh_features
from nimbus.recommend.publish import write_dataset
from nimbus.stores.documents import Collections, DocumentStore
from nimbus.stores.redis.base import RedisStore
from nimbus.stores.redis.features import FeatureStore, RealtimeEvent
from nimbus.stores.redis.keys import MODEL_TOPIC, Keys
from nimbus.stores.redis.live import LiveModelStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KEY = {"X-API-Key": "nimbus-local-key"}
FIFTY_FIFTY = [{"name": "control", "model": "champion", "weight": 0.5},
               {"name": "treatment", "model": "challenger", "weight": 0.5}]


def keys_per_master(settings: Settings) -> list[int]:
    client = RedisStore.for_settings(settings).client
    return [node.redis_connection.dbsize() for node in client.get_primaries()]


@pytest.fixture
def cluster(live_recommender: dict, redis_cluster: str) -> dict:
    """The same features and models live on the cluster (champion v1, challenger v2) as on the single Redis
    (champion v1): ``settings`` names the cluster, ``single`` the stack's one Redis."""
    single = live_recommender["settings"]
    settings = single.model_copy(update={"redis_url": redis_cluster})
    RedisStore.for_settings(settings).client.flushdb()  # on every master
    publish_features(FeatureStore.for_settings(settings), live_recommender["features"])
    first, second = live_recommender["versions"]
    promote_version(settings, first)
    promote_version(settings, second, "challenger")
    return {**live_recommender, "settings": settings, "single": single}


def test_the_url_names_a_cluster_of_three_masters(cluster: dict) -> None:
    store = RedisStore.for_settings(cluster["settings"])
    assert store.cluster and not RedisStore.for_settings(cluster["single"]).cluster
    health = store.health()
    assert health.up and health.info["cluster"] == "ok, 3 masters"
    assert len(keys_per_master(cluster["settings"])) == 3


def test_recommendations_from_the_cluster_match_the_single_redis(cluster: dict) -> None:
    users = [str(u) for u in cluster["features"].user_ids[:40]] + ["never-seen-before"]
    with TestClient(create_recommend_app(cluster["settings"])) as on_cluster, \
            TestClient(create_recommend_app(cluster["single"])) as on_single:
        for user in users:
            got = on_cluster.get(f"/recommendations/{user}", params={"k": 5}).json()
            want = on_single.get(f"/recommendations/{user}", params={"k": 5}).json()
            assert got["degraded"] is False and got["strategy"] == want["strategy"]
            assert got["model_version"] == cluster["versions"][0]
            assert got["feature_version"] == cluster["features"].version
            assert got["items"] == want["items"]
        assert on_cluster.get("/health").json()["redis"] == "ok"
    # per-user keys hash to the users' slots: every master holds some
    assert all(n > 0 for n in keys_per_master(cluster["settings"]))


def test_events_update_online_features_once_per_event(cluster: dict) -> None:
    users = [str(u) for u in cluster["features"].user_ids[:30]]
    with TestClient(create_recommend_app(cluster["settings"])) as rec, \
            TestClient(create_events_app(cluster["settings"]), headers=KEY) as events:
        clicked = {u: rec.get(f"/recommendations/{u}").json()["items"][0]["item_id"] for u in users}
        batch = {"events": [{"event_id": f"ev-{u}", "user_id": u, "item_id": item, "type": "click"}
                            for u, item in clicked.items()]}  # one batch, thirty users, many slots
        assert events.post("/events", json=batch).json() == {"accepted": 30, "duplicates": 0, "unknown_items": 0}
        assert events.post("/events", json=batch).json()["duplicates"] == 30  # the marks are per user, in its slot
        store = FeatureStore.for_settings(cluster["settings"])
        for user, item in clicked.items():
            counts, recent = store.realtime(user, 10)
            assert recent[0] == item and counts["n"] == "1"
            assert item not in {i["item_id"] for i in rec.get(f"/recommendations/{user}").json()["items"]}


def test_an_experiment_counts_exposures_and_outcomes_on_the_cluster(cluster: dict) -> None:
    settings = cluster["settings"]
    champion, challenger = cluster["versions"]
    experiments = create_experiments_app(settings)
    experiments.dependency_overrides[get_settings] = lambda: settings  # its routes read the settings per request
    with TestClient(create_recommend_app(settings)) as rec, \
            TestClient(create_events_app(settings), headers=KEY) as events, TestClient(experiments) as admin:
        created = admin.post("/experiments", json={"name": "cluster-test", "variants": FIFTY_FIFTY}, headers=KEY)
        assert created.status_code == 201, created.text
        exp = admin.post(f"/experiments/{created.json()['id']}/start", headers=KEY).json()
        recommender = rec.app.state.service.recommender
        recommender.live.refresh()
        recommender.assigner.refresh()
        rng = random.Random(7)
        users = [str(u) for u in cluster["features"].user_ids[:80]] + [f"new-{i}" for i in range(120)]
        answers, outcomes, expected = [], [], Counter()
        for user in users:
            body = rec.get(f"/recommendations/{user}", params={"k": 5}).json()
            assert body["experiment"] == exp["id"]
            assert body["model_version"] == (champion if body["variant"] == "control" else challenger)
            answers.append(body)
            expected[(body["variant"], "exposures")] += 1
            if rng.random() < 0.4:
                item = body["items"][0]["item_id"]
                outcomes.append({"event_id": f"c-{body['request_id']}", "user_id": user, "item_id": item,
                                 "type": "click", "request_id": body["request_id"]})
                expected[(body["variant"], "clicks")] += 1
                if rng.random() < 0.5:
                    outcomes.append({"event_id": f"p-{body['request_id']}", "user_id": user, "item_id": item,
                                     "type": "purchase", "request_id": body["request_id"]})
                    expected[(body["variant"], "purchases")] += 1
        for listener in recommender.listeners:  # the exposure buffers, written to the cluster
            getattr(listener, "flush", lambda: None)()
        assert events.post("/events", json={"events": outcomes}).status_code == 200
        assert events.post("/events", json={"events": outcomes[:20]}).status_code == 200  # a retried delivery

        results = admin.get(f"/experiments/{exp['id']}/results", headers=KEY).json()
        by_name = {v["name"]: v for v in results["variants"]}
        for variant in ("control", "treatment"):
            for metric in ("exposures", "clicks", "purchases"):
                assert by_name[variant][metric] == expected[(variant, metric)], (variant, metric)
        assert sum(v["users"] for v in results["variants"]) == len(users)
        performance = admin.get("/performance/recommendations", headers=KEY).json()
        assert sum(p["exposures"] for p in performance["series"]) == len(answers)
        served = {i["item_id"] for a in answers for i in a["items"]}
        assert performance["distinct_items"] == pytest.approx(len(served), rel=0.03)  # HyperLogLog union

        stopped = admin.post(f"/experiments/{exp['id']}/stop", headers=KEY).json()
        assert stopped["status"] == "stopped"
    documents = DocumentStore.for_settings(settings)
    assert documents.collection(Collections.EXPOSURES).count_documents({"experiment": exp["id"]}) == len(answers)
    assert documents.collection(Collections.OUTCOMES).count_documents({"experiment": exp["id"], "type": "click"}) \
        == expected[("control", "clicks")] + expected[("treatment", "clicks")]


def subscribers(settings: Settings, topic: str) -> int:
    channel = Keys.channel(topic)
    client = RedisStore.for_settings(settings).client
    return sum(dict(node.redis_connection.pubsub_numsub(channel)).get(channel.encode(), 0)
               for node in client.get_nodes())


def test_a_serving_process_learns_of_a_promotion_by_pub_sub(cluster: dict) -> None:
    settings = cluster["settings"]
    first, second = cluster["versions"]
    # no poll within the test: only the pub/sub message can make it swap
    live = LiveModels(FeatureStore.for_settings(settings), LiveModelStore.for_settings(settings), poll_s=3600)
    live.start()
    try:
        assert live.state.models["champion"].version == first
        for _ in range(200):  # the listener thread subscribes on its own; wait until a node has it
            if subscribers(settings, MODEL_TOPIC):
                break
            time.sleep(0.05)
        assert subscribers(settings, MODEL_TOPIC) == 1
        promote_version(settings, second)
        for _ in range(200):
            if live.state.models["champion"].version == second:
                break
            time.sleep(0.05)
        assert live.state.models["champion"].version == second
    finally:
        live.stop()


def test_the_scheduled_refresh_swaps_features_on_the_cluster_and_prunes(cluster: dict) -> None:
    settings = cluster["settings"]
    write_dataset(cluster["dataset"], settings)
    result = refresh_features(settings)
    store = FeatureStore.for_settings(settings)
    assert store.current_feature_version() == result["version"] != cluster["features"].version
    assert result["users"] == cluster["dataset"].interactions["user_id"].nunique()
    user = str(cluster["dataset"].interactions["user_id"].iloc[0])
    blob, _, _ = store.read_user(result["version"], user, 5)
    assert blob
    # pruning drops the first version's keys from every master (a SCAN on each), never the current one
    first = cluster["features"].version
    assert list(store.client.scan_iter(match=Keys.fs_pattern(first)))
    store.write_feature_set("v-newest", b"items", [("alice", b"vector")], {})
    assert store.prune_feature_versions(keep=1) == [first]
    assert not list(store.client.scan_iter(match=Keys.fs_pattern(first)))
    assert store.feature_meta(result["version"]) is not None


def test_the_local_stack_waits_for_a_cluster_and_never_starts_a_redis_on_its_port(cluster: dict, tmp_path) -> None:
    from nimbus.local.stack import LocalStack

    settings = cluster["settings"].model_copy(update={"home": tmp_path})
    stack = LocalStack(settings, ephemeral=True)
    (status,) = stack.up(["redis"], timeout_s=10)
    assert status.up and status.pid is None  # the cluster's, not a process of the stack's
    assert not (tmp_path / "run" / "redis.json").exists()
    stack.down(["redis"])
    assert RedisStore.for_settings(cluster["settings"]).health().up  # down left the user's cluster alone


def test_a_slot_moved_to_another_master_is_followed_by_the_one_round_trip_read(cluster: dict) -> None:
    """The request path writes its three commands straight to the node its slot map names; after a
    resharding that node answers MOVED, and the read must follow to the new owner (and learn the map)."""
    store = FeatureStore.for_settings(cluster["settings"])
    user, version = str(cluster["features"].user_ids[0]), cluster["features"].version
    store.apply_events([RealtimeEvent("mv-1", user, "i1", "", 1.0, 1.0)], recent_n=5)
    before = store.read_user(version, user, 5)
    assert before[0] and before[2] == [b"i1"]
    client, key = store.client, Keys.rt_user(user)
    slot, source = client.keyslot(key), client.get_node_from_key(key)
    target = next(node for node in client.get_primaries() if node.name != source.name)
    src, dst = source.redis_connection, target.redis_connection
    src_id, dst_id = src.execute_command("CLUSTER MYID"), dst.execute_command("CLUSTER MYID")
    dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
    keys = src.execute_command("CLUSTER GETKEYSINSLOT", slot, 1000)
    assert len(keys) >= 3  # the user's vector, hash, recent list and event mark
    src.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys)
    for node in client.get_primaries():
        node.redis_connection.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
    assert client.get_node_from_key(key).name == source.name  # the client's map is stale now
    assert store.read_user(version, user, 5) == before
    assert client.get_node_from_key(key).name == target.name
    assert store.read_user(version, user, 5) == before  # and straight from the new owner


def test_drift_samples_of_many_models_are_written_in_one_pipeline_across_slots(redis_cluster: str) -> None:
    """predict's sampler writes every model's rows and the set of sampled models in one flush."""
    store = LiveModelStore(redis_cluster)
    store.client.flushdb()
    rows = {f"served-{i}": [b'{"n": %d}' % j for j in range(i + 1)] for i in range(12)}
    assert len({key_slot(Keys.served_samples(m).encode()) for m in rows}) > 1  # the keys span slots
    store.push_samples_of(rows)
    store.push_samples_of({"served-0": [b'{"n": 1}']})
    assert store.sampled_models() == sorted(rows)
    assert store.samples("served-0") == [b'{"n": 1}', b'{"n": 0}']  # newest first
    assert [len(store.samples(m)) for m in sorted(rows, key=lambda m: int(m.split("-")[1]))][1:] == list(range(2, 13))
