"""Registry models for a batch run: ``name@alias`` or ``name@version`` -> a loaded model.

The driver resolves each reference once (the run records the versions, so a rerun uses
the same ones) and ships the fitted scikit-learn model to executors as bytes in a
Spark broadcast: workers score with the estimator itself, without pyfunc's wrapping.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nimbus.config import Settings
from nimbus.errors import InvalidInput, NotFound

_REF = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)(@(?P<at>[A-Za-z0-9_.\-]+))?$")


@dataclass(frozen=True)
class ModelRef:
    name: str
    at: str  # an alias or a version number

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        match = _REF.match(text.strip())
        if not match:
            raise InvalidInput(f"model {text!r}: expected name, name@alias or name@version")
        return cls(match["name"], match["at"] or "champion")

    @property
    def label(self) -> str:
        return f"{self.name}@{self.at}"


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    version: str
    run_id: str
    inputs: tuple[str, ...]
    kind: str  # classifier | regressor


def parse_refs(text: str | list[str]) -> list[ModelRef]:
    items = text.split(",") if isinstance(text, str) else text
    refs = [ModelRef.parse(t) for t in items if t.strip()]
    if not refs:
        raise InvalidInput("no models given: expected e.g. churn-lr@champion,churn-hgb@3")
    names = [r.name for r in refs]
    if len(set(names)) != len(names):
        raise InvalidInput(f"a model is named twice in {', '.join(r.label for r in refs)}")
    return refs


def resolve(settings: Settings, refs: list[ModelRef]) -> list[ResolvedModel]:
    """Pin each reference to a registry version (aliases move; a run must not)."""
    from mlflow.exceptions import MlflowException

    from nimbus.stores.registry import Registry

    client = Registry.for_settings(settings).client
    out = []
    for ref in refs:
        try:
            mv = client.get_model_version(ref.name, ref.at) if ref.at.isdigit() else \
                client.get_model_version_by_alias(ref.name, ref.at)
        except MlflowException as exc:
            raise NotFound(f"model {ref.label} is not in the registry") from exc
        out.append(describe(settings, ref.name, str(mv.version), mv.run_id or ""))
    return out


def describe(settings: Settings, name: str, version: str, run_id: str = "") -> ResolvedModel:
    from mlflow.models import get_model_info

    info = get_model_info(f"models:/{name}/{version}")
    if info.signature is None or not info.signature.inputs.has_input_names():
        raise InvalidInput(f"model {name} v{version} has no named input signature")
    kind = "classifier" if hasattr(load(settings, name, version), "predict_proba") else "regressor"
    return ResolvedModel(name, version, run_id, tuple(info.signature.inputs.input_names()), kind)


def load(settings: Settings, name: str, version: str):  # noqa: ANN201 - a fitted scikit-learn estimator
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.registry_uri)
    return _load_cached(settings.registry_uri, name, version)


_loaded: dict[tuple[str, str, str], object] = {}


def _load_cached(registry: str, name: str, version: str):  # noqa: ANN202
    key = (registry, name, version)
    if key not in _loaded:
        import mlflow

        _loaded[key] = mlflow.sklearn.load_model(f"models:/{name}/{version}")
    return _loaded[key]


def payloads(settings: Settings, models: list[ResolvedModel]) -> dict[str, bytes]:
    """name -> the pickled estimator, for a Spark broadcast."""
    import cloudpickle

    return {m.name: cloudpickle.dumps(load(settings, m.name, m.version)) for m in models}
