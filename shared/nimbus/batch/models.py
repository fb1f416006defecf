"""Registry models for a batch run: ``name@alias`` or ``name@version`` -> a loaded model.

The driver resolves each reference once (the run records the versions, so a rerun uses
the same ones), loads each with the serving loader (:func:`nimbus.serving.models.load`, what the
``predict`` function uses) and ships it to executors as bytes in a Spark broadcast: workers score a
scikit-learn model with the estimator itself, without pyfunc's wrapping, and any other flavour
through ``mlflow.pyfunc``.

Loading a model unpickles it, and unpickling runs code: batch loads only versions an audited
promotion vouches for (:func:`check_trusted`, the loader's own check). The audit trail (MongoDB)
is the root of that trust, not MLflow's own aliases, which anyone who can reach the MLflow server can move.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nimbus.config import Settings
from nimbus.errors import InvalidInput, NotFound
from nimbus.serving import models as serving
from nimbus.serving.models import UntrustedModel
from nimbus.stores.registry import Registry

__all__ = ["ModelRef", "ResolvedModel", "UntrustedModel", "check_trusted", "describe", "parse_refs", "payloads",
           "resolve"]

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


def check_trusted(settings: Settings, ref: ModelRef, version: str) -> None:
    """Refuse a version no audited promotion vouches for (the serving loader's own check)."""
    serving.check_trusted(settings, ref.name, ref.at, version)


def resolve(settings: Settings, refs: list[ModelRef]) -> list[ResolvedModel]:
    """Pin each reference to a registry version (aliases move; a run must not), trusted ones only."""
    registry = Registry.for_settings(settings)
    out = []
    for ref in refs:
        try:
            found = registry.resolve(ref.name, ref.at)
        except NotFound:
            raise NotFound(f"model {ref.label} is not in the registry") from None
        check_trusted(settings, ref, found.version)  # before describe: it may unpickle the model
        out.append(describe(settings, ref.name, found.version, found.run_id))
    return out


def describe(settings: Settings, name: str, version: str, run_id: str = "") -> ResolvedModel:
    """What scoring needs to know of a version: its input columns and whether it gives probabilities.

    Read from the MLmodel file and the version's tags; only a scikit-learn model logged without saying
    its kind (someone's plain ``mlflow.sklearn.log_model``) is loaded to ask it (and kept: it is scored
    next). A model of any other flavour is scored through ``mlflow.pyfunc``: one number per row."""
    registry = Registry.for_settings(settings)
    info = registry.model_info(name, version)
    if info.inputs is None:
        raise InvalidInput(f"model {name} v{version} has no named input signature")
    if "sklearn" not in info.flavors:
        kind = "classifier" if info.kind == "classifier" else "regressor"
    else:
        kind = info.kind or ("classifier" if hasattr(registry.load_sklearn(name, version), "predict_proba")
                             else "regressor")
    return ResolvedModel(name, version, run_id, info.inputs, kind)


def payloads(settings: Settings, models: list[ResolvedModel]) -> dict[str, bytes]:
    """name -> the model as the serving loader loads it (the estimator itself for scikit-learn, else
    pyfunc), pickled for a Spark broadcast."""
    import cloudpickle

    return {m.name: cloudpickle.dumps(serving.load(settings, m.name, m.version, light=False)) for m in models}
