"""The recommender in the registry: register a trained ranker, promote a version, and
publish live versions to Redis, where every serving process watches for them.

MLflow is the source of truth (versions, aliases such as ``champion``); Redis holds the
live projection (alias -> version, and each live version's serving bundle) because the
request path reads it in microseconds and hears changes on a pub/sub channel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nimbus import governance
from nimbus.config import Settings
from nimbus.monitoring.drift import REFERENCE_PATH as DRIFT_REFERENCE_PATH
from nimbus.recommend.bundle import MODEL_NAME, ModelBundle
from nimbus.stores.redis.live import LiveModelStore
from nimbus.stores.registry import Registry

if TYPE_CHECKING:  # training imports scikit-learn and pandas; the models app only needs the hook below
    from nimbus.recommend.training import TrainResult

EXPERIMENT = "nimbus-recommender"
BUNDLE_PATH = "serving/bundle.npz"


def register(result: TrainResult, settings: Settings, promote: bool = True, alias: str = "champion",
             who: str | None = None) -> str:
    """Log the run (params, metrics, the scikit-learn model, the serving bundle), register a
    new version of ``nimbus-recommender`` and, with ``promote``, make it ``alias`` (audited)."""
    import pandas as pd

    from nimbus.recommend.ranking import FEATURES

    x = pd.DataFrame(result.examples[0][:5], columns=list(FEATURES))
    with Registry.for_settings(settings).tracked_run(EXPERIMENT, "recommender-train") as run:
        run.log_params(result.params)
        run.log_metrics(result.metrics)
        version = run.log_sklearn(result.pipeline, x, result.pipeline.predict_proba(x)[:, 1], MODEL_NAME,
                                  name="ranker")
        run.log_bytes(result.bundle.to_bytes(), BUNDLE_PATH)
        if result.reference:  # read by the drift check (nimbus.monitoring.drift)
            run.log_json(result.reference, DRIFT_REFERENCE_PATH)
    if promote:
        promote_version(settings, version, alias, reason="trained", who=who)
    return version


def load_bundle(settings: Settings, version: str) -> ModelBundle:
    """The serving bundle of a registered version, from the run that produced it."""
    bundle = ModelBundle.from_bytes(Registry.for_settings(settings).version_artifact(MODEL_NAME, version, BUNDLE_PATH))
    bundle.version = str(version)
    return bundle


def publish(settings: Settings, version: str, alias: str = "champion", bundle: ModelBundle | None = None) -> ModelBundle:
    """Put the bundle of ``version`` in Redis and point the live ``alias`` at it (serving processes swap).

    This moves the live projection only; a registry alias moves through ``nimbus.governance``,
    whose hook (:class:`PublishOnMove`) calls this."""
    bundle = bundle or load_bundle(settings, version)
    store = LiveModelStore.for_settings(settings)
    store.put_model(MODEL_NAME, bundle.version, bundle.to_bytes())
    store.set_live(MODEL_NAME, alias, bundle.version)
    return bundle


class PublishOnMove:
    """The recommender's governance hook: a version must have a loadable bundle to be promoted,
    and once its alias moves it goes live in every serving process."""

    def check(self, settings: Settings, name: str, version: str) -> None:
        load_bundle(settings, version)  # fails before the alias moves if the version is unusable

    def moved(self, settings: Settings, name: str, alias: str, version: str) -> None:
        publish(settings, version, alias)


governance.register_hook(MODEL_NAME, PublishOnMove())


def promote_version(settings: Settings, version: str, alias: str = "champion", reason: str | None = None,
                    who: str | None = None) -> dict:
    """Move the registry alias to ``version`` (audited; the hook publishes it live); the audit record.

    Promoting the version the alias already has publishes it again (idempotent, still audited)."""
    return governance.promote(settings, MODEL_NAME, version, alias, reason=reason, who=who, force=True)


def sync_live(settings: Settings) -> dict[str, str]:
    """Make Redis's live aliases match the registry's (for aliases moved in the MLflow UI)."""
    from nimbus.errors import NotFound

    try:
        aliases = Registry.for_settings(settings).aliases(MODEL_NAME)
    except NotFound:
        return {}
    live = LiveModelStore.for_settings(settings).live(MODEL_NAME)
    changed = {}
    for alias, version in aliases.items():
        if live.get(alias) != str(version):
            publish(settings, str(version), alias)
            changed[alias] = str(version)
    return changed
