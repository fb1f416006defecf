"""What a serving process serves right now, and how it changes without a failed request.

A :class:`LiveState` (the item table of the current feature version and one model bundle
per live alias) is never mutated: the watcher builds a new one in the background —
load, validate, warm by scoring a request — and then swaps one reference. Requests in
flight keep the state they started with. A load that fails keeps the old state serving
and is reported (``last_error``, logs, /health).

The swap itself is the shared :class:`nimbus.swap.LiveView` (the ``predict`` function's registry
models use it too); it polls Redis every ``poll_s`` and also listens on the pub/sub channels that
``promote`` and the feature refresh announce on, so a swap usually happens within
milliseconds and at worst within one poll.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from nimbus.recommend.bundle import MODEL_NAME, ModelBundle
from nimbus.recommend.ranking import ItemTable, UserContext, score_inputs
from nimbus.stores.redis.features import FeatureStore
from nimbus.stores.redis.keys import FEATURES_TOPIC, MODEL_TOPIC
from nimbus.stores.redis.live import LiveModelStore
from nimbus.swap import LiveView

log = logging.getLogger("nimbus.recommend.live")


@dataclass(frozen=True)
class LiveState:
    items: ItemTable | None = None
    models: dict[str, ModelBundle] = field(default_factory=dict)  # alias -> bundle

    def fallback(self, limit: int) -> list[str]:
        """Popular item ids without Redis: the item table's list, else the model's snapshot."""
        if self.items is not None:
            return [str(self.items.item_ids[i]) for i in self.items.popular[:limit]]
        for bundle in self.models.values():
            return bundle.popular[:limit]
        return []


def warm(items: ItemTable, bundle: ModelBundle | None) -> None:
    """Score one synthetic request so the first real one pays no lazy cost (and shapes are checked)."""
    _ = items.index, items.category_index
    ctx = UserContext(True, items.item_emb[0].copy(), np.ones(items.n_categories, np.float32),
                      items.popular[:3].astype(np.int32), emb_top=items.popular[3:20].astype(np.int32))
    _cand, x = score_inputs(items, ctx)
    if bundle is not None:
        scores = bundle.decision(x)
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"model {bundle.version} gives non-finite scores")


class LiveModels(LiveView[LiveState]):
    """Keeps ``state`` in step with Redis: the current feature version and live model aliases."""

    def __init__(self, features: FeatureStore, models: LiveModelStore, model_name: str = MODEL_NAME,
                 with_models: bool = True, poll_s: float = 2.0) -> None:
        super().__init__(LiveState(), features, (MODEL_TOPIC, FEATURES_TOPIC), poll_s, name="live", logger=log)
        self.features = features
        self.models = models
        self.model_name = model_name
        self.with_models = with_models
        self.poll_s = poll_s

    def build(self, old: LiveState) -> LiveState | None:
        """What changed in Redis, loaded and warmed; None when this process already serves it."""
        version = self.features.current_feature_version()
        live = self.models.live(self.model_name) if self.with_models else {}
        items = old.items
        if version and (items is None or items.version != version):
            blob = self.features.items_blob(version)
            if blob is None:
                raise ValueError(f"feature version {version} has no item table")
            items = ItemTable.from_bytes(blob)
        models = dict(old.models)
        for alias, model_version in live.items():
            if alias in models and models[alias].version == model_version:
                continue
            blob = self.models.get_model(self.model_name, model_version)
            if blob is None:
                raise ValueError(f"{self.model_name} version {model_version} is live but has no bundle")
            try:
                bundle = ModelBundle.from_bytes(blob)
            except Exception as exc:
                raise ValueError(f"{self.model_name} version {model_version}: unreadable bundle: {exc}") from exc
            bundle.version = model_version
            models[alias] = bundle
        for alias in set(models) - set(live):
            del models[alias]
        if items is old.items and models == old.models:
            return None  # Redis and this process agree
        if items is not None:
            for bundle in models.values() or [None]:
                warm(items, bundle)
        return LiveState(items, models)

    def describe(self, state: LiveState) -> str:
        models = ", ".join(f"{a}=v{b.version}" for a, b in sorted(state.models.items())) or "no model"
        return f"features {state.items.version if state.items else 'none'}, {models}"
