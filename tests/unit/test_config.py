from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from nimbus.config import Settings
from nimbus.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_nimbus_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other tests' stacks set NIMBUS_* in this process; these tests are about the defaults."""
    for name in [n for n in os.environ if n.startswith("NIMBUS_")]:
        monkeypatch.delenv(name)


def test_defaults_point_at_the_local_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(_env_file=None)
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.mongo_url == "mongodb://127.0.0.1:27017/"
    assert settings.aws_endpoint_url == "http://127.0.0.1:4566"
    assert settings.home == tmp_path / ".nimbus"
    assert settings.tracking_uri == f"sqlite:///{tmp_path / '.nimbus' / 'mlflow' / 'mlflow.db'}"


def test_environment_overrides_with_the_nimbus_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIMBUS_REDIS_URL", "redis://cache:6380/2")
    monkeypatch.setenv("NIMBUS_MLFLOW_TRACKING_URI", "http://mlflow:5000")
    ops, ingest = "a" * 64, "b" * 64
    monkeypatch.setenv("NIMBUS_API_KEYS", f"ops:admin:{ops}, ingest:events+read:{ingest},,")
    settings = Settings(_env_file=None)
    assert settings.redis_url == "redis://cache:6380/2"
    assert settings.tracking_uri == "http://mlflow:5000"
    assert settings.registry_uri == "http://mlflow:5000"
    assert [(k.name, sorted(k.scopes), k.sha256.hex()) for k in settings.api_keys] == [
        ("ops", ["admin"], ops), ("ingest", ["events", "read"], ingest)]


def test_an_empty_endpoint_means_real_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIMBUS_AWS_ENDPOINT_URL", "")
    assert Settings(_env_file=None).aws_endpoint_url is None


def test_a_plain_key_in_the_settings_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(_env_file=None, api_keys="very-secret")
    assert "very-secret" not in str(caught.value)
    assert "nimbus keys new" in str(caught.value)


def test_localstack_resources_use_the_names_in_settings() -> None:
    spec = json.loads((ROOT / "localstack" / "resources.json").read_text())
    defaults = Settings(_env_file=None)
    assert {defaults.data_bucket, defaults.artifacts_bucket} <= set(spec["buckets"])
    for queue in (defaults.drop_queue, defaults.airflow_queue):  # the gateway's and Airflow's
        assert queue in {q["name"] for q in spec["queues"]}
        [drop] = [n for n in spec["notifications"] if n["queue"] == queue]
        assert (drop["bucket"], drop["prefix"]) == (defaults.data_bucket, defaults.drop_prefix)


def test_serverless_yml_uses_the_names_in_settings() -> None:
    doc = yaml.safe_load((ROOT / "serverless.yml").read_text())
    defaults = Settings(_env_file=None)
    assert f"'{defaults.data_bucket}'" in doc["custom"]["dataBucket"]
    assert f"'{defaults.artifacts_bucket}'" in doc["custom"]["artifactsBucket"]
    assert doc["custom"]["dropPrefix"] == defaults.drop_prefix


def test_the_actor_and_the_spark_driver_memory_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import getpass

    from nimbus.audit import actor

    defaults = Settings(_env_file=None)
    assert defaults.spark_driver_memory == "2g" and defaults.actor is None
    assert actor(defaults) == getpass.getuser()
    monkeypatch.setenv("NIMBUS_ACTOR", "api-key:nimb…")
    monkeypatch.setenv("NIMBUS_SPARK_DRIVER_MEMORY", "4g")
    settings = Settings(_env_file=None)
    assert actor(settings) == "api-key:nimb…" and settings.spark_driver_memory == "4g"
    monkeypatch.setenv("NIMBUS_ACTOR", "")
    assert Settings(_env_file=None).actor is None


def test_a_driver_memory_spark_would_not_read_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("NIMBUS_SPARK_DRIVER_MEMORY", "lots")
    with pytest.raises(ValidationError, match="spark_driver_memory"):
        Settings(_env_file=None)


def test_a_redis_cluster_is_named_by_its_url_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    from nimbus.stores.redis.base import cluster_url

    monkeypatch.setenv("NIMBUS_REDIS_URL", "redis+cluster://10.0.0.5:7000")
    assert cluster_url(Settings(_env_file=None).redis_url) == "redis://10.0.0.5:7000"
    assert cluster_url("rediss+cluster://u:pw@cache:7000/0") == "rediss://u:pw@cache:7000/0"
    assert cluster_url("redis://cache:6379/0") is None and cluster_url("unix:///run/redis.sock") is None


@pytest.mark.parametrize("url", ["redis+cluster://u:s3cret@cache:7000/2", "rediss+cluster://cache:7000?db=1"])
def test_a_cluster_url_with_a_database_other_than_0_is_refused(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIMBUS_REDIS_URL", url)
    with pytest.raises(ConfigError, match="NIMBUS_REDIS_URL: a Redis Cluster has database 0 only") as caught:
        Settings(_env_file=None)
    assert "s3cret" not in str(caught.value)
