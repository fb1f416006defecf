"""Model versioning operations every model shares: list, promote, roll back — each audited.

MLflow holds the aliases; each registered model also keeps the history of its
``champion`` in a tag, so a rollback knows which version to return to. Promoting the
recommender also publishes it live to the serving processes.
"""

from __future__ import annotations

import json
from typing import Any

from nimbus import audit
from nimbus.config import Settings
from nimbus.errors import InvalidInput, NotFound
from nimbus.stores.registry import Registry

HISTORY_TAG = "nimbus.history.{alias}"


def _client(settings: Settings):  # noqa: ANN202
    return Registry.for_settings(settings).client


def _history(settings: Settings, name: str, alias: str) -> list[str]:
    model = _client(settings).get_registered_model(name)
    return json.loads(model.tags.get(HISTORY_TAG.format(alias=alias), "[]"))


def list_models(settings: Settings) -> list[dict[str, Any]]:
    out = []
    for model in _client(settings).search_registered_models():
        versions = _client(settings).search_model_versions(f"name='{model.name}'")
        out.append({"name": model.name, "aliases": dict(model.aliases),
                    "versions": sorted((int(v.version) for v in versions), reverse=True)})
    return out


def promote(settings: Settings, name: str, version: str, alias: str = "champion", reason: str | None = None,
            who: str | None = None) -> dict[str, Any]:
    """Point ``alias`` at ``version`` (which must exist); returns the audit record."""
    from mlflow.exceptions import MlflowException

    client = _client(settings)
    try:
        client.get_model_version(name, version)
    except MlflowException as exc:
        raise NotFound(f"{name} has no version {version!r}") from exc
    try:
        previous = client.get_model_version_by_alias(name, alias).version
    except MlflowException:
        previous = None
    if str(previous) == str(version):
        raise InvalidInput(f"{name}@{alias} is already version {version}")
    history = _history(settings, name, alias)
    if previous is not None:
        history.append(str(previous))
    _apply(settings, name, alias, str(version), history)
    return audit.record(settings, "promote", f"model:{name}", "succeeded", who=who,
                        models={name: str(version)},
                        details={"alias": alias, "from": previous, "to": str(version), "reason": reason})


def rollback(settings: Settings, name: str, alias: str = "champion", who: str | None = None) -> dict[str, Any]:
    """Return ``alias`` to the version it pointed at before the last promotion."""
    from mlflow.exceptions import MlflowException

    client = _client(settings)
    try:
        history = _history(settings, name, alias)
        current = client.get_model_version_by_alias(name, alias).version
    except MlflowException as exc:
        raise NotFound(f"{name} has no {alias} to roll back") from exc
    if not history:
        raise InvalidInput(f"{name}@{alias} has no earlier version to roll back to")
    target = history.pop()
    _apply(settings, name, alias, target, history)
    return audit.record(settings, "rollback", f"model:{name}", "succeeded", who=who, models={name: target},
                        details={"alias": alias, "from": str(current), "to": target})


def _apply(settings: Settings, name: str, alias: str, version: str, history: list[str]) -> None:
    client = _client(settings)
    client.set_registered_model_alias(name, alias, version)
    client.set_registered_model_tag(name, HISTORY_TAG.format(alias=alias), json.dumps(history[-50:]))
    from nimbus.recommend.bundle import MODEL_NAME

    if name == MODEL_NAME:  # the recommender's serving processes follow Redis, not MLflow
        from nimbus.recommend.models import publish

        publish(settings, version, alias)
