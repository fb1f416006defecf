"""Registry models for a batch run: ``name@alias`` or ``name@version`` -> a loaded model.

The driver resolves each reference once (the run records the versions, so a rerun uses
the same ones) and ships the fitted scikit-learn model to executors as bytes in a
Spark broadcast: workers score with the estimator itself, without pyfunc's wrapping.

Loading a model unpickles it, and unpickling runs code: batch loads only versions an audited
promotion vouches for (:func:`check_trusted`). The audit trail (MongoDB) is the root of that
trust, not MLflow's own aliases, which anyone who can reach the MLflow server can move.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nimbus import governance
from nimbus.config import Settings
from nimbus.errors import Conflict, InvalidInput, NotFound
from nimbus.stores.registry import Registry

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


class UntrustedModel(Conflict):
    """A registry version no audited promotion vouches for: batch will not unpickle it."""


def check_trusted(settings: Settings, ref: ModelRef, version: str) -> None:
    """Refuse a version no audited promotion vouches for.

    ``name@alias``: the alias's last audited move must have put it on ``version`` (an alias moved
    in MLflow directly, outside ``nimbus models promote``, is refused). ``name@version``: some
    audited move must have put an alias on that version once."""
    moves = governance.audited_moves(settings, ref.name)
    if ref.at.isdigit():
        if not any(str(m["to"]) == version for m in moves):
            raise UntrustedModel(f"model {ref.label}: version {version} was never promoted through the audited "
                                 f"path, so batch will not load it; promote it (`nimbus models promote {ref.name} "
                                 f"{version}`, or with --alias) to score it")
        return
    last = [m for m in moves if m["alias"] == ref.at]
    if not last or str(last[-1]["to"]) != version:
        audited = f"its last audited move was to version {last[-1]['to']}" if last else \
            "no audited move of it is on record"
        raise UntrustedModel(f"model {ref.label}: the alias points at version {version} in MLflow, but {audited} "
                             "(moved outside the audited path?), so batch will not load it; move it with "
                             f"`nimbus models promote {ref.name} <version> --alias {ref.at}`, or score a version "
                             f"an audited promotion vouched for ({ref.name}@<version>)")


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

    Read from the MLmodel file and the version's tags; only a model logged without saying its
    kind (someone's plain ``mlflow.sklearn.log_model``) is loaded to ask it (and kept: it is scored next)."""
    registry = Registry.for_settings(settings)
    info = registry.model_info(name, version)
    if info.inputs is None:
        raise InvalidInput(f"model {name} v{version} has no named input signature")
    if "sklearn" not in info.flavors:
        raise InvalidInput(f"model {name} v{version} is not a scikit-learn model (flavours: "
                           f"{', '.join(info.flavors) or 'none'})")
    kind = info.kind or ("classifier" if hasattr(registry.load_sklearn(name, version), "predict_proba")
                         else "regressor")
    return ResolvedModel(name, version, run_id, info.inputs, kind)


def payloads(settings: Settings, models: list[ResolvedModel]) -> dict[str, bytes]:
    """name -> the pickled estimator, for a Spark broadcast."""
    import cloudpickle

    registry = Registry.for_settings(settings)
    return {m.name: cloudpickle.dumps(registry.load_sklearn(m.name, m.version)) for m in models}
