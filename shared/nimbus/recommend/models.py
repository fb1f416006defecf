"""The recommender in the registry: register a trained ranker, promote a version, and
publish live versions to Redis, where every serving process watches for them.

MLflow is the source of truth (versions, aliases such as ``champion``); Redis holds the
live projection (alias -> version, and each live version's serving bundle) because the
request path reads it in microseconds and hears changes on a pub/sub channel.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from nimbus.config import Settings
from nimbus.errors import NimbusError
from nimbus.monitoring.drift import REFERENCE_PATH as DRIFT_REFERENCE_PATH
from nimbus.recommend.bundle import MODEL_NAME, ModelBundle
from nimbus.recommend.ranking import FEATURES
from nimbus.recommend.training import TrainResult
from nimbus.stores.features import FeatureStore
from nimbus.stores.registry import Registry

EXPERIMENT = "nimbus-recommender"
BUNDLE_PATH = "serving/bundle.npz"


class ModelNotFound(NimbusError):
    """No such registered model version."""


def _mlflow(settings: Settings):  # noqa: ANN202 - the mlflow module
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.registry_uri)
    return mlflow


def register(result: TrainResult, settings: Settings, promote: bool = True, alias: str = "champion") -> str:
    """Log the run (params, metrics, the scikit-learn model, the serving bundle), register a
    new version of ``nimbus-recommender`` and, with ``promote``, make it ``alias``."""
    mlflow = _mlflow(settings)
    from mlflow.models import infer_signature

    mlflow.set_experiment(EXPERIMENT)
    x = pd.DataFrame(result.examples[0][:5], columns=list(FEATURES))
    with mlflow.start_run(run_name="recommender-train") as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params(result.params)
        mlflow.log_metrics(result.metrics)
        info = mlflow.sklearn.log_model(
            result.pipeline, name="ranker", input_example=x,
            signature=infer_signature(x, result.pipeline.predict_proba(x)[:, 1]),
            registered_model_name=MODEL_NAME,
        )
        path = Path(tmp) / "bundle.npz"
        path.write_bytes(result.bundle.to_bytes())
        mlflow.log_artifact(str(path), artifact_path="serving")
        if result.reference:  # read by the drift check (nimbus.monitoring.drift)
            mlflow.log_dict(result.reference, DRIFT_REFERENCE_PATH)
    version = str(info.registered_model_version)
    client = Registry.for_settings(settings).client
    client.set_model_version_tag(MODEL_NAME, version, "run_id", run.info.run_id)
    if promote:
        promote_version(settings, version, alias)
    return version


def load_bundle(settings: Settings, version: str) -> ModelBundle:
    """The serving bundle of a registered version, from the run that produced it."""
    client = Registry.for_settings(settings).client
    from mlflow.exceptions import MlflowException

    try:
        model_version = client.get_model_version(MODEL_NAME, version)
    except MlflowException as exc:
        raise ModelNotFound(f"{MODEL_NAME} has no version {version!r}") from exc
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(model_version.run_id, BUNDLE_PATH, tmp)
        bundle = ModelBundle.from_bytes(Path(local).read_bytes())
    bundle.version = str(version)
    return bundle


def publish(settings: Settings, version: str, alias: str = "champion", bundle: ModelBundle | None = None) -> ModelBundle:
    """Put the bundle of ``version`` in Redis and point ``alias`` at it (serving processes swap)."""
    bundle = bundle or load_bundle(settings, version)
    store = FeatureStore.for_settings(settings)
    store.put_model(MODEL_NAME, bundle.version, bundle.to_bytes())
    store.set_live(MODEL_NAME, alias, bundle.version)
    return bundle


def promote_version(settings: Settings, version: str, alias: str = "champion") -> ModelBundle:
    """Move the registry alias to ``version``, then publish it live."""
    bundle = load_bundle(settings, version)  # fails before the alias moves if the version is unusable
    Registry.for_settings(settings).client.set_registered_model_alias(MODEL_NAME, alias, version)
    return publish(settings, version, alias, bundle)


def sync_live(settings: Settings) -> dict[str, str]:
    """Make Redis's live aliases match the registry's (for aliases moved in the MLflow UI)."""
    client = Registry.for_settings(settings).client
    from mlflow.exceptions import MlflowException

    try:
        aliases = dict(client.get_registered_model(MODEL_NAME).aliases)
    except MlflowException:
        return {}
    live = FeatureStore.for_settings(settings).live(MODEL_NAME)
    changed = {}
    for alias, version in aliases.items():
        if live.get(alias) != str(version):
            publish(settings, str(version), alias)
            changed[alias] = str(version)
    return changed
