"""Model versioning every model shares: list, promote, roll back — each audited.

Every alias move of every model goes through :func:`move_alias`: the CLI and API's promote
and rollback, a training run that promotes what it trained, an experiment's models. It
checks the version, asks the model's hooks whether the version can serve, moves the MLflow
alias, keeps the alias's history in a registered-model tag (so a rollback knows where to
return), writes the audit record and tells the hooks.

Domain packages say what must happen when an alias of *their* model moves by registering
an :class:`AliasHook` (the recommender publishes the version to Redis, where its serving
processes watch): governance imports no domain package. The composition roots (the CLI,
the HTTP apps, the functions) import the domain modules that register hooks
(:func:`nimbus.recommend.models` registers on import).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from nimbus import audit
from nimbus.config import Settings
from nimbus.errors import Conflict, InvalidInput, NotFound
from nimbus.stores.registry import Registry

HISTORY_TAG = "nimbus.history.{alias}"
HISTORY_KEEP = 50


class AliasHook(Protocol):
    """What a domain package does when an alias of its model moves."""

    def check(self, settings: Settings, name: str, version: str) -> None:
        """Raise (an InvalidInput with the reason) when ``version`` cannot serve: the alias then stays."""

    def moved(self, settings: Settings, name: str, alias: str, version: str) -> None:
        """The alias now points at ``version`` in the registry."""


_hooks: dict[str, list[AliasHook]] = {}
EVERY_MODEL = "*"  # register_hook(EVERY_MODEL, hook): the hook hears every model's moves


def register_hook(model: str, hook: AliasHook) -> None:
    """Call ``hook`` whenever an alias of ``model`` (of any model: ``EVERY_MODEL``) moves (once per hook object)."""
    hooks = _hooks.setdefault(model, [])
    if hook not in hooks:
        hooks.append(hook)


def hooks_of(model: str) -> list[AliasHook]:
    return [*_hooks.get(model, ()), *(_hooks.get(EVERY_MODEL, ()) if model != EVERY_MODEL else ())]


def _history(registry: Registry, name: str, alias: str) -> list[str]:
    return json.loads(registry.model_tag(name, HISTORY_TAG.format(alias=alias)) or "[]")


def audited_moves(settings: Settings, name: str, timed: bool = False) -> list[dict[str, Any]]:
    """Every alias move of ``name`` on the audit trail (what :func:`move_alias` records: alias, from,
    to, reason; with ``timed`` also the record's ``at``), oldest first. The trail, not MLflow's aliases
    or tags, is what vouches for a version: anyone who can reach the MLflow server can move those."""
    return [{**r["details"], "at": r["at"]} if timed else r["details"]
            for r in reversed(audit.history(settings, f"model:{name}", limit=None))
            if r.get("outcome") == "succeeded" and isinstance(r.get("details"), dict)
            and r["details"].get("alias") and r["details"].get("to") is not None]


def list_models(settings: Settings) -> list[dict[str, Any]]:
    return Registry.for_settings(settings).list_models()


def move_alias(settings: Settings, name: str, alias: str, version: str, *, action: str = "promote",
               reason: str | None = None, who: str | None = None, history: list[str] | None = None,
               force: bool = False) -> dict[str, Any]:
    """Point ``alias`` of ``name`` at ``version``: checked, hooked, history kept, audited.

    ``history`` replaces the alias's history (a rollback pops it); by default the version the
    alias left is appended. ``force`` moves (and tells the hooks) even when the alias already
    points there. Returns the audit record."""
    registry = Registry.for_settings(settings)
    version = str(registry.version(name, version).version)  # NotFound before anything moves
    try:
        previous: str | None = registry.alias(name, alias).version
    except NotFound:
        previous = None
    if previous == version and not force:
        raise Conflict(f"{name}@{alias} is already version {version}")
    for hook in hooks_of(name):
        hook.check(settings, name, version)
    if history is None:
        history = _history(registry, name, alias)
        if previous is not None and previous != version:
            history.append(previous)
    registry.set_alias(name, alias, version)
    registry.set_model_tag(name, HISTORY_TAG.format(alias=alias), json.dumps(history[-HISTORY_KEEP:]))
    # Recorded before the hooks run: a serving process they wake checks the trail for this very move.
    record = audit.record(settings, action, f"model:{name}", "succeeded", who=who, models={name: version},
                          details={"alias": alias, "from": previous, "to": version, "reason": reason})
    for hook in hooks_of(name):
        hook.moved(settings, name, alias, version)
    return record


def promote(settings: Settings, name: str, version: str, alias: str = "champion", reason: str | None = None,
            who: str | None = None, force: bool = False) -> dict[str, Any]:
    """Point ``alias`` at ``version`` (which must exist); returns the audit record. Without
    ``force``, an alias already at that version is a Conflict; with it, the move is redone
    (the hooks run again: a live projection that was lost is restored)."""
    return move_alias(settings, name, alias, version, reason=reason, who=who, force=force)


def rollback(settings: Settings, name: str, alias: str = "champion", who: str | None = None) -> dict[str, Any]:
    """Return ``alias`` to the version it pointed at before the last promotion."""
    registry = Registry.for_settings(settings)
    try:
        registry.alias(name, alias)
    except NotFound:
        raise NotFound(f"{name} has no {alias} to roll back") from None
    history = _history(registry, name, alias)
    if not history:
        raise InvalidInput(f"{name}@{alias} has no earlier version to roll back to")
    target = history.pop()
    return move_alias(settings, name, alias, target, action="rollback", who=who, history=history, force=True)
