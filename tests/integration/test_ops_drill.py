"""The restore drill of docs/operations.md, on the test stack: back up, wipe every store, restore,
and serve the same recommendations with the same audit trail. Backup and restore run as the
`nimbus` command in their own processes, as an operator runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from nimbus import audit, governance
from nimbus.api.recommend import create_recommend_app
from nimbus.config import Settings
from nimbus.local.stack import LocalStack, mlflow_files
from nimbus.monitoring.traffic import flush_all
from nimbus.recommend.bundle import MODEL_NAME
from nimbus.recommend.models import load_bundle
from nimbus.stores.documents import Collections, DocumentStore
from nimbus.stores.objects import ObjectStore
from nimbus.stores.redis.base import RedisStore
from nimbus.stores.registry import Registry
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def nimbus(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nimbus.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200"})


def serve(settings: Settings, users: list[str]) -> dict[str, dict]:
    """What a fresh serving process answers each user (the request id aside: new with every answer)."""
    with TestClient(create_recommend_app(settings)) as client:
        answers = {user: client.get(f"/recommendations/{user}", params={"k": 5}) for user in users}
    flush_all()  # its traffic lands now, not in the middle of the wipe
    assert all(a.status_code == 200 for a in answers.values()), {u: a.text for u, a in answers.items()}
    return {user: {k: a.json()[k] for k in ("items", "model_version", "strategy", "degraded")}
            for user, a in answers.items()}


def wipe(settings: Settings, stack: LocalStack) -> None:
    """Lose everything: Redis flushed, the collections dropped, the buckets emptied, MLflow's database
    and artifacts deleted (its server stopped first, as a restore needs)."""
    RedisStore.for_settings(settings).client.flushdb()
    documents = DocumentStore.for_settings(settings)
    for name in documents.db.list_collection_names():
        documents.db.drop_collection(name)
    objects = ObjectStore.for_settings(settings)
    for bucket in (settings.data_bucket, settings.artifacts_bucket):
        for key in objects.list_keys(bucket):
            objects.client.delete_object(Bucket=bucket, Key=key)
    assert stack.down(["mlflow"]) == ["mlflow"]
    db, artifacts = mlflow_files(settings)
    db.unlink()
    shutil.rmtree(artifacts)


@pytest.mark.slow
def test_a_restored_backup_serves_the_same_recommendations_and_audit_trail(live_recommender: dict,
                                                                          tmp_path: Path) -> None:
    settings = live_recommender["settings"]
    first, second = live_recommender["versions"]
    # the fixture's model is shared with other tests, which may have moved its aliases already
    target = first if Registry.for_settings(settings).aliases(MODEL_NAME).get("challenger") == str(second) else second
    governance.promote(settings, MODEL_NAME, target, "challenger", reason="drill: a promotion the restore must keep")
    objects = ObjectStore.for_settings(settings)
    planted = {"logs/drill/one.json": b'{"a": 1}', "reports/drill/two.bin": bytes(range(256)) * 40}
    for key, data in planted.items():
        objects.put_bytes(settings.data_bucket, key, data)
    users = [str(u) for u in live_recommender["features"].user_ids[:6]] + ["never-seen-before"]
    served = serve(settings, users)
    assert sum(s["strategy"] == "personalized" for s in served.values()) == 6
    trail = audit.history(settings, limit=None)
    newest = trail[0]  # newest first: the drill's own promotion
    assert (newest["action"], newest["details"]["alias"], newest["models"]) == ("promote", "challenger",
                                                                               {MODEL_NAME: target})
    registry = Registry.for_settings(settings)
    aliases = registry.aliases(MODEL_NAME)
    client = RedisStore.for_settings(settings).client
    expiring = {key for key in client.scan_iter() if client.pttl(key) > 3_600_000}  # none runs out during the test
    keys = client.dbsize()

    backup_dir = tmp_path / "backup"
    done = nimbus("ops", "backup", str(backup_dir), "--json")
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    print("backup:", {name: (p["items"], p["bytes"]) for name, p in manifest["parts"].items()},
          f"{manifest['duration_s']} s")  # the figures, with -s
    assert manifest["parts"]["redis"]["items"] == keys
    assert manifest["parts"]["mongodb"]["collections"][Collections.AUDIT] == len(trail)
    assert manifest["parts"]["s3"]["items"] == len(planted)
    assert manifest["parts"]["mlflow"]["items"] > 1  # the database and the bundles' artifacts

    refused = nimbus("ops", "restore", str(backup_dir))  # the stores still hold everything
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: not empty: redis, ") and "mongodb audit" in errors[0], refused.stderr

    stack = LocalStack(settings, mlflow_server=True)
    try:
        wipe(settings, stack)
        assert client.dbsize() == 0 and audit.history(settings, limit=None) == []
        assert objects.list_keys(settings.data_bucket) == []

        done = nimbus("ops", "restore", str(backup_dir))
        assert done.returncode == 0, done.stderr
        assert "redis" in done.stdout and f"{keys}" in done.stdout  # the summary table
        print(done.stdout)
    finally:
        stack.up(["mlflow"], timeout_s=180)  # the rest of the session needs MLflow, whatever happened here

    assert serve(settings, users) == served
    assert audit.history(settings, limit=None) == trail
    assert registry.aliases(MODEL_NAME) == aliases
    assert load_bundle(settings, second).version == second  # its artifact is back in MLflow's store
    assert {key: objects.get_bytes(settings.data_bucket, key) for key in planted} == planted
    assert expiring and all(client.pttl(key) > 0 for key in expiring)  # expiries came back with the keys
