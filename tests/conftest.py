"""Fixtures: the real services (Redis, MongoDB-wire, S3/SQS emulator, MLflow server),
started once per test session on free loopback ports, with state cleaned between tests.

Unit tests use none of them; a test that asks for ``stack_settings`` (or a fixture built
on it) gets the whole stack, started on first use.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nimbus.config import Settings, get_settings
from nimbus.errors import LocalStackError
from nimbus.local.stack import LocalStack, free_port
from tests.ray_cluster import ray_cluster  # noqa: F401 - one Ray cluster (Jobs API) per module that asks
from tests.spark_connect import spark_connect  # noqa: F401 - one Spark Connect server per module that asks

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist's workers (make test WORKERS=3) start with COLUMNS=80 and LINES=24 in their environment: rich would fix
    # nimbus.console's width at 80 when it is imported, whatever COLUMNS a test's CliRunner or subprocess sets.
    for name in ("COLUMNS", "LINES"):
        os.environ.pop(name, None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``make test WORKERS=3``: ``--dist loadfile --no-loadscope-reorder``), the files with the most
    slow tests are handed out first, so that the few long files do not start last and run on alone while the
    other workers sit idle. Each file's tests keep their order; a serial run keeps pytest's order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    slow: dict[Path, int] = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: -slow[item.path])  # stable: a file's tests stay together and in order


def stack_env(home: Path) -> dict[str, str]:
    """NIMBUS_* variables for a stack of our own on free ports, data under ``home``."""
    return {
        "NIMBUS_HOME": str(home),
        "NIMBUS_PROJECT_ROOT": str(ROOT),
        "NIMBUS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "NIMBUS_MONGO_URL": f"mongodb://127.0.0.1:{free_port()}/",
        "NIMBUS_AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "NIMBUS_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # The request path's 50 ms Redis deadline degrades answers on a CPU-starved machine (make test WORKERS=3's workers,
        # each with its own stack, on 2 cores): a test that means to see a degraded answer causes one itself.
        "NIMBUS_REQUEST_TIMEOUT_S": "5.0",
    }


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The real local stack for this test session; NIMBUS_* in os.environ point at it.

    A free port is only free when it is picked: another process (another xdist worker's stack or Ray, another
    session on the machine) may bind it before a slow server (MLflow, ~20 s) does. Then the stack is started
    again on fresh ports, twice at most."""
    saved = {k: os.environ.get(k) for k in stack_env(ROOT)}
    try:
        for attempt in range(3):
            os.environ.update(stack_env(tmp_path_factory.mktemp("nimbus-home")))
            get_settings.cache_clear()
            settings = get_settings()
            stack = LocalStack(settings, ephemeral=True, mlflow_server=True)
            try:
                stack.up(timeout_s=120)
                break
            except LocalStackError:
                stack.down()
                if attempt == 2:
                    raise
        yield settings
    finally:
        stack.down()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real 3-master Redis Cluster on free loopback ports (redis-server --cluster-enabled yes, joined by
    redis-cli --cluster create, no replicas, nothing saved), ready (cluster_state:ok on every node), for the
    session; its URL ``redis+cluster://127.0.0.1:<port>``. The servers are stopped by pid at the end."""
    from nimbus.local.redis_cluster import LocalRedisCluster

    with LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster")) as url:
        yield url


@pytest.fixture
def clean_stack(stack_settings: Settings) -> Settings:
    """The session's stack with Redis, MongoDB, the buckets and the drop queues emptied."""
    from nimbus.monitoring.traffic import flush_all
    from nimbus.stores.documents import DocumentStore
    from nimbus.stores.objects import ObjectStore, QueueStore
    from nimbus.stores.redis.base import RedisStore

    flush_all()  # an earlier test's requests still buffered here must not land after the clean
    RedisStore.for_settings(stack_settings).client.flushdb()
    documents = DocumentStore.for_settings(stack_settings)
    for name in documents.db.list_collection_names():
        documents.db[name].delete_many({})
    objects = ObjectStore.for_settings(stack_settings)
    for bucket in (stack_settings.data_bucket, stack_settings.artifacts_bucket):
        for key in objects.list_keys(bucket):
            objects.client.delete_object(Bucket=bucket, Key=key)
    for name in (stack_settings.drop_queue, stack_settings.airflow_queue):  # drained, not purged: one purge a minute
        queue = QueueStore(stack_settings, name)
        while messages := queue.receive(wait_s=0):
            for message in messages:
                queue.delete(message["ReceiptHandle"])
    return stack_settings


@pytest.fixture(scope="session")
def recommender_models(stack_settings: Settings):
    """A small synthetic log, its features, and two registered ranker versions (not yet live)."""
    from nimbus.recommend.data import generate
    from nimbus.recommend.featurize import compute_features
    from nimbus.recommend.models import register
    from nimbus.recommend.training import train

    dataset = generate(n_users=600, n_items=300, n_categories=10, days=40, seed=21)
    result = train(dataset)
    first = register(result, stack_settings, promote=False)
    second = register(result, stack_settings, promote=False)
    return {"dataset": dataset, "features": compute_features(dataset), "result": result,
            "versions": (first, second)}


@pytest.fixture
def live_recommender(clean_stack: Settings, recommender_models: dict) -> dict:
    """Features published and the first version live as champion, on a clean stack."""
    from nimbus.recommend.models import promote_version
    from nimbus.recommend.pipeline import publish_features
    from nimbus.stores.redis.features import FeatureStore

    publish_features(FeatureStore.for_settings(clean_stack), recommender_models["features"])
    promote_version(clean_stack, recommender_models["versions"][0])
    return {**recommender_models, "settings": clean_stack}


@pytest.fixture(scope="session")
def churn_models(stack_settings: Settings) -> dict[str, str]:
    """The example churn models, registered and promoted once per session."""
    from nimbus.batch.examples import train_models

    return train_models(stack_settings, n=4000)


@pytest.fixture
def batch_stack(clean_stack: Settings, churn_models: dict[str, str]) -> Settings:
    """A clean stack with the churn models as champions (the batch runs' defaults), whatever an earlier test promoted.

    Through the audited path (``force``: the alias may already be there), because batch loads only
    versions an audited promotion vouches for, and cleaning the stack emptied the audit trail."""
    from nimbus import governance

    for name, version in churn_models.items():
        governance.move_alias(clean_stack, name, "champion", version, force=True, reason="test: churn champions")
    return clean_stack


@pytest.fixture(scope="session")
def ray_ready(stack_settings: Settings) -> Iterator[None]:
    """A local Ray for the session (a serving process keeps one too), shut down at the end."""
    import ray

    from nimbus.automl.runner import ray_session

    ray_session(stack_settings)
    yield
    ray.shutdown()
