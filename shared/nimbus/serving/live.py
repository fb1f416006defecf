"""The registry models one serving process holds, kept in step with the registry's aliases.

The state maps ``(model, at)`` — ``at`` an alias or a version number — to a loaded
:class:`~nimbus.serving.models.ServedModel` and is never mutated: a model asked for the first time is
loaded (validated, warmed) and added by swapping in a new map; an alias that moved is loaded, validated
and warmed in the background and swapped in by one reference (the shared :class:`nimbus.swap.LiveView`),
while requests in flight finish on the version they started with. A load that fails keeps the old
version serving and is reported (``last_error``, /predict/health).

Moves are heard on the ``registry`` pub/sub topic (announced by :mod:`nimbus.serving.hooks` on every
governance move) and, should a message be missed, on a poll of the registry every ``predict_poll_s``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType

from nimbus.config import Settings
from nimbus.errors import NotFound
from nimbus.serving.models import ServedModel, load
from nimbus.stores.redis.keys import REGISTRY_TOPIC
from nimbus.stores.redis.live import LiveModelStore
from nimbus.stores.registry import Registry
from nimbus.swap import LiveView

log = logging.getLogger("nimbus.serving.live")
Key = tuple[str, str]  # (model name, alias or version)
State = Mapping[Key, ServedModel]
Loader = Callable[[Settings, str, str, str], ServedModel]


class RegistryModels(LiveView[State]):
    """What ``POST /predict/{model}`` answers with: loaded on first use, swapped when an alias moves."""

    def __init__(self, settings: Settings, poll_s: float | None = None, loader: Loader = load) -> None:
        super().__init__(MappingProxyType({}), LiveModelStore.for_settings(settings), (REGISTRY_TOPIC,),
                         settings.predict_poll_s if poll_s is None else poll_s, name="predict", logger=log)
        self.settings = settings
        self.loader = loader

    def get(self, name: str, at: str) -> ServedModel:
        """The model ``name@at``, loaded now if this process has not served it yet (NotFound, Conflict)."""
        served = self.state.get((name, at))
        if served is None:
            served = self._add(name, at)
        return served

    def loaded(self, name: str, at: str) -> ServedModel:
        """``name@at`` if this process holds it in a form safe to call on the event loop (a scikit-learn
        form, not someone else's pyfunc code); LookupError otherwise (the caller takes the slow path)."""
        served = self.state.get((name, at))
        if served is None or served.kind == "pyfunc":
            raise LookupError(f"{name}@{at}")
        return served

    def _add(self, name: str, at: str) -> ServedModel:
        with self._lock:  # concurrent first requests for one model load it once
            if (served := self.state.get((name, at))) is not None:
                return served
            registry = Registry.for_settings(self.settings)
            try:
                version = registry.resolve(name, at).version
            except NotFound:
                raise NotFound(f"model {name}@{at} is not in the registry") from None
            served = self._load(name, version, at)
            self.state = MappingProxyType({**self.state, (name, at): served})
            return served

    def _load(self, name: str, version: str, at: str) -> ServedModel:
        for (held, _), served in self.state.items():  # the same version under another alias: reuse it
            if held == name and served.version == version:
                return served
        return self.loader(self.settings, name, version, at)

    def build(self, old: State) -> State | None:
        """Every held alias re-resolved; a moved one loaded (and warmed) before anything is swapped."""
        registry = Registry.for_settings(self.settings)
        new = dict(old)
        for (name, at), served in old.items():
            if at.isdigit():
                continue  # a version never changes
            try:
                version = registry.alias(name, at).version
            except NotFound:
                del new[(name, at)]  # the alias was deleted: the next request for it is a 404
                continue
            if version != served.version:
                new[(name, at)] = self._load(name, version, at)
        return MappingProxyType(new) if new != dict(old) else None

    def describe(self, state: State) -> str:
        return ", ".join(f"{n}@{a}=v{m.version}" for (n, a), m in sorted(state.items())) or "no model"

    def held(self) -> list[dict[str, str]]:
        return [{"model": n, "at": a, "version": m.version, "kind": m.kind, "form": m.form}
                for (n, a), m in sorted(self.state.items())]
