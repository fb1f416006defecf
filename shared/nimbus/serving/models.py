"""One registry version, loaded for serving: its signature, the form it is served in, and its answers.

:func:`load` is the one loader of every process that scores registry models — the ``predict``
function and batch alike. It refuses a version no audited promotion vouches for (loading unpickles,
and unpickling runs code: the audit trail in MongoDB is the root of trust, not MLflow's own aliases),
a version without a named input signature, and one whose form cannot answer its own input example.
A scikit-learn model is served by its lightest form that agrees with the estimator
(:mod:`nimbus.serving.forms`); any other flavour through ``mlflow.pyfunc``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nimbus import governance
from nimbus.config import Settings
from nimbus.errors import Conflict, NotFound
from nimbus.serving.forms import LINEAR_ATOL, Estimator, FoldedLinear, Onnx, Pyfunc, fold_linear
from nimbus.serving.signature import Signature
from nimbus.stores.registry import Registry

log = logging.getLogger("nimbus.serving")
ONNX_PATH = "onnx/model.onnx"  # where AutoML logs the export it checked (nimbus.automl.tracking)
ONNX_ATOL = 1e-3  # float32 inputs: the tolerance AutoML's own check allows (nimbus.automl.export)
WARM_ROWS = 20


class UntrustedModel(Conflict):
    """A registry version no audited promotion vouches for: it will not be unpickled."""


class Unservable(Conflict):
    """A version Nimbus cannot serve as it was logged (no signature, a failing form)."""


def check_trusted(settings: Settings, name: str, at: str, version: str) -> None:
    """Refuse a version no audited promotion vouches for.

    ``at`` an alias: its last audited move must have put it on ``version`` (an alias moved in MLflow
    directly, outside ``nimbus models promote``, is refused). ``at`` a version: some audited move must
    have put an alias on it once."""
    label = f"{name}@{at}"
    moves = governance.audited_moves(settings, name)
    if at.isdigit():
        if not any(str(m["to"]) == version for m in moves):
            raise UntrustedModel(f"model {label}: version {version} was never promoted through the audited path, "
                                 f"so it will not be loaded; promote it (`nimbus models promote {name} {version}`, "
                                 "or with --alias) to score it")
        return
    last = [m for m in moves if m["alias"] == at]
    if not last or str(last[-1]["to"]) != version:
        audited = f"its last audited move was to version {last[-1]['to']}" if last else \
            "no audited move of it is on record"
        raise UntrustedModel(f"model {label}: the alias points at version {version} in MLflow, but {audited} "
                             "(moved outside the audited path?), so it will not be loaded; move it with "
                             f"`nimbus models promote {name} <version> --alias {at}`, or score a version an "
                             f"audited promotion vouched for ({name}@<version>)")


@dataclass(eq=False)
class ServedModel:
    name: str
    version: str
    kind: str  # classifier | regressor | pyfunc (what its answers look like)
    signature: Signature
    scorer: Any  # a form of nimbus.serving.forms
    classes: tuple[Any, ...] = ()  # a classifier's labels, in the order of its probabilities

    @property
    def form(self) -> str:
        return self.scorer.form

    def predict(self, records: Sequence[Any], limit: int | None = None) -> list[dict[str, Any]]:
        """One answer per record (checked against the signature first: Unprocessable names the column)."""
        return self.answers(self.scorer.output(self.signature.arrays(records, limit)))

    def answers(self, output: Any) -> list[dict[str, Any]]:
        if self.kind == "classifier":
            keys = [str(c) for c in self.classes]
            best = np.argmax(output, axis=1)
            return [{"label": self.classes[b], "probabilities": dict(zip(keys, row.tolist(), strict=True))}
                    for b, row in zip(best.tolist(), output, strict=True)]
        if self.kind == "regressor":
            return [{"value": v} for v in np.asarray(output, dtype=np.float64).tolist()]
        return [{"value": v} for v in _json_rows(output)]

    def score(self, frame: Any) -> np.ndarray:
        """Batch: one number per row of a DataFrame of the input columns (a classifier's last class's
        probability, a regressor's value, a pyfunc model's output, which must then be one number a row)."""
        columns = {n: frame[n].to_numpy() for n in self.signature.names}
        output = self.scorer.output(columns)
        if self.kind == "classifier":
            return np.asarray(output, dtype=np.float64)[:, -1]
        values = np.asarray(output.to_numpy() if hasattr(output, "to_numpy") else output, dtype=np.float64)
        if values.ndim > 1 and values.shape[1] == 1:
            values = values[:, 0]
        if values.shape != (len(frame),):
            raise Unservable(f"model {self.name} v{self.version} gives {values.shape} outputs for {len(frame)} "
                             "rows; batch scores models that give one number per row")
        return values

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "kind": self.kind, "form": self.form,
                "inputs": self.signature.as_dict(), **({"classes": list(self.classes)} if self.classes else {})}


def load(settings: Settings, name: str, version: str, at: str | None = None, *, light: bool = True) -> ServedModel:
    """``name`` version ``version`` (reached through ``at``, an alias or the version: the trust check
    asks of it) loaded, in its lightest form that agrees with the estimator, and warmed on its input
    example. ``light=False``: the estimator itself (what batch ships to Spark executors)."""
    registry = Registry.for_settings(settings)
    check_trusted(settings, name, at or version, version)
    info = registry.model_info(name, version)
    if not info.columns:
        raise Unservable(f"model {name} v{version} has no named input signature; log it with one "
                         "(mlflow's signature=infer_signature(inputs, outputs)) to serve it")
    signature = Signature.from_specs(info.columns)
    names = signature.names
    if "sklearn" in info.flavors:
        estimator, example = registry.load_model(name, version, "sklearn")
        classifier = info.kind == "classifier" if info.kind else hasattr(estimator, "predict_proba")
        served = ServedModel(name, version, "classifier" if classifier else "regressor", signature,
                             Estimator(estimator, names, classifier),
                             tuple(_plain(c) for c in getattr(estimator, "classes_", ())) if classifier else ())
        rows = _warm_rows(signature, example)
        if light:
            served = _lighter(settings, served, estimator, rows)
    else:
        model, example = registry.load_model(name, version, "pyfunc")
        served = ServedModel(name, version, "pyfunc", signature, Pyfunc(model, names))
        rows = _warm_rows(signature, example)
    try:
        answers = served.predict(rows)  # the whole request path once: the first real request pays nothing
    except Exception as exc:  # any failure on its own example: the model cannot serve
        raise Unservable(f"model {name} v{version} fails on its input example: {type(exc).__name__}: {exc}") from exc
    if served.kind != "pyfunc" and not all(np.isfinite(_numbers(a)).all() for a in answers):
        raise Unservable(f"model {name} v{version} gives non-finite predictions on its input example")
    log.info("loaded %s v%s (%s, %s form)", name, version, served.kind, served.form)
    return served


def _lighter(settings: Settings, served: ServedModel, estimator: Any, rows: list[dict[str, Any]]) -> ServedModel:
    """The folded linear form or the ONNX export, when it agrees with the estimator on ``rows``."""
    classifier = served.kind == "classifier"
    candidates: list[tuple[Any, float]] = []
    if all(c.numeric for c in served.signature.columns):
        folded = fold_linear(estimator)
        if folded is not None and (not classifier or folded[0].shape[0] in (1, len(served.classes))):
            candidates.append((FoldedLinear(*folded, served.signature.names, classifier), LINEAR_ATOL))
    if not candidates:
        try:
            data = Registry.for_settings(settings).version_artifact(served.name, served.version, ONNX_PATH)
        except NotFound:
            data = None
        if data is not None:
            candidates.append((Onnx(data, classifier), ONNX_ATOL))
    if not candidates:
        return served
    columns = served.signature.arrays(rows)
    expected = np.asarray(served.scorer.output(columns), dtype=np.float64)
    for scorer, atol in candidates:
        try:
            got = np.asarray(scorer.output(columns), dtype=np.float64)
            scale = 1.0 if classifier else max(float(np.ptp(expected)), float(np.abs(expected).max()), 1.0)
            if got.shape == expected.shape and np.allclose(got, expected, rtol=0, atol=atol * scale):
                return ServedModel(served.name, served.version, served.kind, served.signature, scorer, served.classes)
            log.warning("%s v%s: the %s form differs from the estimator; serving the estimator",
                        served.name, served.version, scorer.form)
        except Exception as exc:  # noqa: BLE001 - a lighter form that cannot run is skipped, never fatal
            log.warning("%s v%s: the %s form cannot run (%s); serving the estimator", served.name,
                        served.version, scorer.form, exc)
    return served


def _warm_rows(signature: Signature, example: Any) -> list[dict[str, Any]]:
    """Records of the version's input example (as JSON would bring them), else one synthetic record."""
    if example is not None and hasattr(example, "to_json"):
        try:
            rows = json.loads(example.head(WARM_ROWS).to_json(orient="records", date_format="iso"))
            signature.arrays(rows)
            return rows
        except Exception:  # noqa: BLE001 - an example that does not fit the signature: warm synthetically
            pass
    return [signature.synthetic()]


def _numbers(answer: dict[str, Any]) -> np.ndarray:
    if "probabilities" in answer:
        return np.array(list(answer["probabilities"].values()), dtype=np.float64)
    return np.array([answer["value"]], dtype=np.float64)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _json_rows(output: Any) -> list[Any]:
    """A pyfunc model's output as one JSON value per row (a DataFrame's rows become objects)."""
    if hasattr(output, "to_dict") and hasattr(output, "columns"):
        return json.loads(output.to_json(orient="records", date_format="iso"))
    if hasattr(output, "tolist"):
        return output.tolist()
    return [_plain(v) for v in output]
