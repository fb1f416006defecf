"""Promotion, rollback and the audit trail, through the core, the CLI-facing API and the models function."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from nimbus import audit
from nimbus.api.models import create_models_app
from nimbus.batch.examples import train_models
from nimbus.config import Settings
from nimbus.errors import Conflict, NotFound
from nimbus.governance import promote, rollback
from nimbus.stores.registry import Registry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_versions(stack_settings: Settings, churn_models: dict) -> tuple[str, str]:
    """churn-lr gets a second version; champion stays on the first until a test promotes."""
    second = train_models(stack_settings, n=3000, promote=False)["churn-lr"]
    return churn_models["churn-lr"], second


def champion(settings: Settings, name: str) -> str:
    return Registry.for_settings(settings).client.get_model_version_by_alias(name, "champion").version


def test_promote_then_rollback_restores_the_previous_version_and_audits_both(
    clean_stack: Settings, two_versions: tuple[str, str]
) -> None:
    first, second = two_versions
    promote(clean_stack, "churn-lr", second, reason="better offline AUC", who="alice")
    assert champion(clean_stack, "churn-lr") == second
    rollback(clean_stack, "churn-lr", who="bob")
    assert champion(clean_stack, "churn-lr") == first
    rollback_record, promote_record = audit.history(clean_stack, "model:churn-lr")[:2]
    assert (promote_record["action"], promote_record["actor"]) == ("promote", "alice")
    assert {k: promote_record["details"][k] for k in ("from", "to", "reason")} == {
        "from": first, "to": second, "reason": "better offline AUC"}
    assert (rollback_record["action"], rollback_record["actor"]) == ("rollback", "bob")
    assert rollback_record["details"]["from"] == second and rollback_record["details"]["to"] == first


def test_bad_promotions_and_rollbacks_are_clear_errors(clean_stack: Settings, two_versions: tuple[str, str]) -> None:
    _first, _ = two_versions
    with pytest.raises(NotFound, match="churn-lr has no version '999'"):
        promote(clean_stack, "churn-lr", "999")
    with pytest.raises(Conflict, match="already version"):
        promote(clean_stack, "churn-lr", champion(clean_stack, "churn-lr"))
    with pytest.raises(NotFound):
        rollback(clean_stack, "no-such-model")


def test_the_models_function_needs_a_key_and_promotes(clean_stack: Settings, two_versions: tuple[str, str]) -> None:
    first, second = two_versions
    with TestClient(create_models_app()) as client:
        assert client.get("/models").status_code == 401
        assert client.get("/models", headers={"X-API-Key": "wrong"}).status_code == 401
        key = {"X-API-Key": "nimbus-local-key"}  # the local stack's key
        names = {m["name"] for m in client.get("/models", headers=key).json()}
        assert {"churn-lr", "churn-hgb"} <= names
        answer = client.post("/models/churn-lr/promote", json={"version": second}, headers=key)
        assert answer.status_code == 200 and answer.json()["details"]["to"] == second
        assert client.post("/models/churn-lr/promote", json={"version": "x1"}, headers=key).status_code == 422
        assert client.post("/models/churn-lr/promote", json={"version": "999"}, headers=key).status_code == 404
        again = client.post("/models/churn-lr/promote", json={"version": second}, headers=key)
        assert again.status_code == 409 and "already version" in again.json()["detail"]
        back = client.post("/models/churn-lr/rollback", json={}, headers=key)
        assert back.status_code == 200 and champion(clean_stack, "churn-lr") == first
        trail = client.get("/models/audit", params={"subject": "model:churn-lr"}, headers=key).json()
        assert [t["action"] for t in trail[:2]] == ["rollback", "promote"]
