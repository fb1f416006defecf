"""The winner as ONNX (skl2onnx), checked against scikit-learn on held-out rows before it is kept.

The ONNX model takes one input per feature column, shaped ``[N, 1]``: numeric columns as
float32 (NaN where missing), categorical columns as strings ("" where missing), named like
the columns. ``onnx_inputs`` builds that feed from a DataFrame.

skl2onnx's own SimpleImputer converter ignores ``add_indicator`` and only imputes strings
whose missing marker is a string; the pipelines here impute numbers with a missing
indicator and strings marked NaN, so ``_register_imputer`` adds both to skl2onnx (once per
process). What still does not convert (dates, through a FunctionTransformer) is recorded
as a reason, never a failed job.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from nimbus.automl import algorithms
from nimbus.automl.profile import Profile
from nimbus.serving.forms import onnx_strings

LABEL_AGREEMENT = 1.0  # every held-out label must match
PROBA_ATOL = 1e-3  # float32 inputs: probabilities may differ in the last digits
VALUE_RTOL = 1e-4  # regression: relative to the spread of the predictions
CHECK_ROWS = 1000


@dataclass
class OnnxExport:
    """The serialized model (None when it did not convert or did not match) and what was checked."""

    model: bytes | None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> str | None:
        return self.info.get("error")


def to_onnx(model: Any, profile: Profile, x_check: pd.DataFrame) -> OnnxExport:
    """Convert a fitted Pipeline and compare its predictions with scikit-learn's on ``x_check``.

    Numbers go in as float64 first (the preprocessing then rounds like scikit-learn's), and as
    float32 when that does not run (onnxruntime's tree ensembles and SVR take float32 only)."""
    rows = x_check.iloc[:CHECK_ROWS]
    reasons = []
    for precision in (np.float64, np.float32):
        try:
            data = _convert(model, profile, x_check, precision).SerializeToString()
        except Exception as exc:  # noqa: BLE001 - a step skl2onnx has no converter for, or one it cannot express
            reasons.append(f"does not convert: {type(exc).__name__}: {_first_line(exc)}")
            continue
        try:
            outputs = _session(data).run(None, onnx_inputs(rows, profile, precision))
        except Exception as exc:  # noqa: BLE001 - any failure of the runtime on the model is a reason not to export
            reasons.append(f"onnxruntime cannot run it: {type(exc).__name__}: {_first_line(exc)}")
            continue
        check = _compare(model, rows, outputs, profile.task)
        if check["matches"]:
            name = np.dtype(precision).name
            return OnnxExport(data, {"check": check, "bytes": len(data), "numeric_inputs": name,
                                     "inputs": _input_doc(x_check, profile, name)})
        reasons.append(f"predictions differ from scikit-learn's: {check}")
    return OnnxExport(None, {"error": f"{type(model.steps[-1][1]).__name__}: " + "; ".join(dict.fromkeys(
        f"{name}: {why}" for name, why in zip(("float64", "float32"), reasons, strict=False)))})


def to_onnx_within(model: Any, profile: Profile, x_check: pd.DataFrame, seconds: float) -> OnnxExport:
    """``to_onnx``, not attempted when the model's trees are expected to take skl2onnx longer than
    ``seconds`` to walk (a large forest: 15 s measured for 150 deep trees), and given up (the reason
    recorded) when it has not finished by then. The conversion runs in a daemon thread: one given up
    ends on its own and never holds the process's exit."""
    import threading

    if seconds <= 0:
        return OnnxExport(None, {"error": "not attempted: no time left in the job's budget"})
    expected = conversion_s(model)
    if expected > seconds:
        return OnnxExport(None, {"error": f"not attempted: converting its {tree_nodes(model):,} tree nodes would take "
                                          f"about {expected:.0f} s, {seconds:.1f} s were left in the job's budget"})
    result: list[OnnxExport] = []
    thread = threading.Thread(target=lambda: result.append(to_onnx(model, profile, x_check)), name="onnx",
                              daemon=True)
    thread.start()
    thread.join(seconds)
    if not result:
        return OnnxExport(None, {"error": f"not finished within the {seconds:.1f} s left in the job's budget"})
    return result[0]


ONNX_S_PER_NODE = 7e-6  # skl2onnx walking tree nodes in Python: 15 s for ~2M nodes measured here


def conversion_s(model: Any) -> float:
    """What converting ``model`` is expected to take: its tree nodes at ``ONNX_S_PER_NODE``."""
    return tree_nodes(model) * ONNX_S_PER_NODE


def tree_nodes(model: Any) -> int:
    """Tree nodes in a fitted model: its forests' and boosted trees', through pipelines and ensembles."""
    if hasattr(model, "steps"):  # a Pipeline
        return sum(tree_nodes(step) for _, step in model.steps)
    if hasattr(model, "tree_"):
        return int(model.tree_.node_count)
    if hasattr(model, "_predictors"):  # HistGradientBoosting: a list of trees per iteration
        return sum(len(p.nodes) for trees in model._predictors for p in trees)
    return sum(tree_nodes(m) for m in getattr(model, "estimators_", []) if not isinstance(m, list | tuple))


def winner_to_onnx(model: Any, algorithm: str, profile: Profile, x_check: pd.DataFrame, seconds: float) -> OnnxExport:
    """The refit winner as ONNX within ``seconds``, when its algorithm declares an ONNX export."""
    if not algorithms.get(algorithm).onnx:
        return OnnxExport(None, {"error": f"not attempted: {algorithm} has no ONNX export"})
    return to_onnx_within(model, profile, x_check, seconds)


def onnx_inputs(frame: pd.DataFrame, profile: Profile, precision: Any = np.float64) -> dict[str, np.ndarray]:
    """The ONNX model's feed for a DataFrame: one [N, 1] array per used column."""
    feed = {}
    for column in _columns(frame, profile):
        if column in profile.numeric:
            values = pd.to_numeric(frame[column], errors="coerce").to_numpy(precision)
        else:
            values = onnx_strings(frame[column])
        feed[column] = values.reshape(-1, 1)
    return feed


def predict_onnx(data: bytes, frame: pd.DataFrame, profile: Profile, precision: str = "float64") -> list[np.ndarray]:
    return _session(data).run(None, onnx_inputs(frame, profile, np.dtype(precision)))


def _columns(frame: pd.DataFrame, profile: Profile) -> list[str]:
    used = set(profile.numeric) | set(profile.categorical) | set(profile.datetime)
    return [c for c in frame.columns if c in used]


def _input_doc(frame: pd.DataFrame, profile: Profile, precision: str) -> list[dict[str, str]]:
    return [{"name": c, "type": f"{precision} [N,1], NaN = missing" if c in profile.numeric
             else "string [N,1], \"\" = missing"} for c in _columns(frame, profile)]


def _convert(model: Any, profile: Profile, frame: pd.DataFrame, precision: Any) -> Any:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType

    _register()
    number = DoubleTensorType if precision == np.float64 else FloatTensorType
    types = [(c, number([None, 1]) if c in profile.numeric else StringTensorType([None, 1]))
             for c in _columns(frame, profile)]
    options = {id(model.steps[-1][1]): {"zipmap": False}} if profile.task == "classification" else None
    return convert_sklearn(model, initial_types=types, options=options)


def _session(data: bytes) -> Any:
    import onnxruntime

    return onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])


def _compare(model: Any, rows: pd.DataFrame, outputs: list[np.ndarray], task: str) -> dict[str, Any]:
    if task == "classification":
        agreement = float(np.mean(np.asarray(outputs[0]).ravel() == model.predict(rows)))
        gap = float(np.max(np.abs(outputs[1] - model.predict_proba(rows))))
        return {"rows": len(rows), "label_agreement": agreement, "max_proba_diff": gap,
                "matches": agreement >= LABEL_AGREEMENT and gap <= PROBA_ATOL}
    expected = model.predict(rows)
    gap = float(np.max(np.abs(np.asarray(outputs[0]).ravel() - expected)))
    scale = float(np.ptp(expected)) or 1.0
    return {"rows": len(rows), "max_abs_diff": gap, "prediction_range": scale, "matches": gap <= VALUE_RTOL * scale}


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


_REGISTERED = False


def _register() -> None:
    """Teach skl2onnx SimpleImputer's missing indicator and NaN-marked strings (see the module doc),
    and pass HistGradientBoosting's numpy-integer node ids and boolean
    missing-value flags to onnx as ints (newer onnx refuses them)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.shape_calculators.imputer import calculate_sklearn_imputer_output_shapes
    from sklearn.impute import SimpleImputer

    def shape(operator: Any) -> None:
        calculate_sklearn_imputer_output_shapes(operator)
        indicator = _indicator(operator.raw_operator)
        width = operator.outputs[0].type.shape[1]
        if operator.inputs[0].type.__class__.__name__ == "DoubleTensorType":
            from skl2onnx.common.data_types import DoubleTensorType

            operator.outputs[0].type = DoubleTensorType([operator.outputs[0].type.shape[0], width])
        if indicator is not None and width is not None:
            operator.outputs[0].type.shape[1] = width + len(indicator.features_)

    update_registered_converter(SimpleImputer, "SklearnSimpleImputer", shape, _convert_imputer)
    from skl2onnx.common._registration import get_converter, get_shape_calculator
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    for cls in (HistGradientBoostingClassifier, HistGradientBoostingRegressor):
        alias = f"Sklearn{cls.__name__}"
        original = get_converter(alias)
        update_registered_converter(cls, alias, get_shape_calculator(alias), _plain_ints(original),
                                    options=getattr(original, "get_allowed_options", lambda: None)())
    _REGISTERED = True


def _plain_ints(original: Any) -> Any:
    def convert(scope: Any, operator: Any, container: Any) -> None:
        original(scope, operator, _PlainInts(container))

    return convert


class _PlainInts:
    """A converter's container that hands list attributes to onnx with numpy integers made ints."""

    def __init__(self, container: Any) -> None:
        self._container = container

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)

    def add_node(self, *args: Any, **attrs: Any) -> Any:
        plain = {k: [_plain(x) for x in v] if isinstance(v, list) else v for k, v in attrs.items()}
        return self._container.add_node(*args, **plain)


def _plain(value: Any) -> Any:
    value = value.item() if isinstance(value, np.generic) else value
    return int(value) if isinstance(value, bool) else value


def _indicator(imputer: Any) -> Any:
    return imputer.indicator_ if imputer.add_indicator else None


def _convert_imputer(scope: Any, operator: Any, container: Any) -> None:
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType
    from skl2onnx.operator_converters.common import concatenate_variables
    from skl2onnx.operator_converters.imputer_op import convert_sklearn_imputer
    from skl2onnx.proto import onnx_proto

    imputer = operator.raw_operator
    statistics = np.asarray(imputer.statistics_)
    if statistics.dtype.kind == "f" and np.isnan(statistics).any():
        raise NotImplementedError("a SimpleImputer column was empty in training (scikit-learn drops it)")
    indicator = _indicator(imputer)
    if isinstance(operator.inputs[0].type, StringTensorType):
        if indicator is not None:
            raise NotImplementedError("a missing indicator on string columns")
        if not isinstance(imputer.missing_values, str):  # NaN-marked strings: the ONNX feed gives them as ""
            operator.raw_operator = copy.copy(imputer)
            operator.raw_operator.missing_values = ""
        try:
            convert_sklearn_imputer(scope, operator, container)
        finally:
            operator.raw_operator = imputer
        return
    if not (isinstance(imputer.missing_values, float) and np.isnan(imputer.missing_values)):
        raise NotImplementedError(f"imputing missing_values={imputer.missing_values!r}")
    features = concatenate_variables(scope, operator.inputs, container)
    imputed = scope.get_unique_variable_name("imputed")
    missing = scope.get_unique_variable_name("missing")
    container.add_node("IsNaN", features, missing, name=scope.get_unique_operator_name("IsNaN"))
    fill = scope.get_unique_variable_name("fill")
    double = isinstance(operator.inputs[0].type, DoubleTensorType)
    container.add_initializer(fill, onnx_proto.TensorProto.DOUBLE if double else onnx_proto.TensorProto.FLOAT,
                              [1, len(statistics)], statistics.astype(np.float64 if double else np.float32).tolist())
    container.add_node("Where", [missing, fill, features], imputed, name=scope.get_unique_operator_name("Where"))
    index = scope.get_unique_variable_name("indicator_columns")
    container.add_initializer(index, onnx_proto.TensorProto.INT64, [len(indicator.features_)],
                              [int(i) for i in indicator.features_])
    picked = scope.get_unique_variable_name("indicator_bool")
    container.add_node("Gather", [missing, index], picked, axis=1, name=scope.get_unique_operator_name("Gather"))
    flags = scope.get_unique_variable_name("indicator")
    container.add_node("Cast", picked, flags,
                       to=onnx_proto.TensorProto.DOUBLE if double else onnx_proto.TensorProto.FLOAT,
                       name=scope.get_unique_operator_name("Cast"))
    container.add_node("Concat", [imputed, flags], operator.outputs[0].full_name, axis=1,
                       name=scope.get_unique_operator_name("Concat"))
