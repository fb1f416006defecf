"""The forms a registered model is served in, fastest first where the model allows it.

* ``folded-linear``: a scikit-learn linear model, behind any StandardScalers, folded into one weight
  matrix and bias (the recommender's bundle is this fold): a matrix product, no scikit-learn call;
* ``onnx``: the ONNX export AutoML logged beside the winner (it logs it only when it matched
  scikit-learn on held-out rows), run by onnxruntime on one thread;
* ``sklearn``: the fitted estimator itself;
* ``pyfunc``: any other MLflow flavour, through ``mlflow.pyfunc``.

Each form takes the typed columns of :meth:`Signature.arrays` and gives the raw output: for a
classifier the probability matrix (rows x classes, in ``classes`` order), for a regressor one value
per row, for a pyfunc model whatever it returns. Every form pickles (batch ships it to Spark
executors); the ONNX session is rebuilt from its bytes after unpickling.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LINEAR_ATOL = 1e-9  # the fold against the estimator, float64: only rounding may differ


def fold_linear(model: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(coef (k, n), intercept (k,)) of a linear model behind zero or more StandardScalers, with the
    scalers folded in: ``((x - m) / s) . c + b = x . (c / s) + (b - sum(c * m / s))``; None when the
    model is not of that shape."""
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler

    steps = [s for _, s in model.steps] if hasattr(model, "steps") else [model]
    final, scalers = steps[-1], steps[:-1]
    if not isinstance(final, LogisticRegression | LinearRegression | Ridge):
        return None
    if not all(isinstance(s, StandardScaler) for s in scalers):
        return None
    coef = np.atleast_2d(np.asarray(final.coef_, dtype=np.float64))
    intercept = np.atleast_1d(np.asarray(final.intercept_, dtype=np.float64)).copy()
    for scaler in reversed(scalers):  # innermost first: the scaler nearest the model folds first
        scale = scaler.scale_ if scaler.scale_ is not None else np.ones(coef.shape[1])
        mean = scaler.mean_ if scaler.mean_ is not None and scaler.with_mean else np.zeros(coef.shape[1])
        coef = coef / scale
        intercept = intercept - coef @ mean
    return coef, intercept


def onnx_strings(values: Any) -> np.ndarray:
    """A categorical column as an ONNX export's string input (the one convention of the export and of
    serving it): NaN, what scikit-learn's imputer fills, is ""; anything else its ``str()`` — None (JSON and
    Parquet nulls) included, which scikit-learn keeps as a category of its own, "None"."""
    return np.array(["" if isinstance(v, float) and np.isnan(v) else str(v) for v in values], dtype=object)


def _matrix(columns: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    return np.column_stack([columns[n].astype(np.float64, copy=False) for n in names])


def _frame(columns: dict[str, np.ndarray], names: tuple[str, ...]) -> Any:
    import pandas as pd

    return pd.DataFrame({n: columns[n] for n in names}, copy=False)


class FoldedLinear:
    form = "folded-linear"

    def __init__(self, coef: np.ndarray, intercept: np.ndarray, names: tuple[str, ...], classifier: bool) -> None:
        self.coef_t, self.intercept, self.names, self.classifier = coef.T.copy(), intercept, names, classifier

    def output(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        z = _matrix(columns, self.names) @ self.coef_t + self.intercept
        if not self.classifier:
            return z[:, 0]
        if z.shape[1] == 1:  # binary: the positive class's logit
            p = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.column_stack([1.0 - p, p])
        z = np.exp(z - z.max(axis=1, keepdims=True))  # multinomial: softmax
        return z / z.sum(axis=1, keepdims=True)


ONE_THREAD_ROWS = 1000  # up to a request's worth of rows, an estimator runs on one OpenMP thread
_controller: Any = None


def _one_thread() -> Any:
    """OpenMP limited to one thread for this call. A HistGradientBoosting predicting one row with
    every core's thread measured 38 ms on a busy 2-core machine, 0.74 ms on one (the limit costs ~35 us);
    a serving process gets its parallelism from its workers, not from threads within a request."""
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()  # scans the loaded libraries once (milliseconds)
    return _controller.limit(limits=1, user_api="openmp")


class Estimator:
    form = "sklearn"

    def __init__(self, model: Any, names: tuple[str, ...], classifier: bool) -> None:
        self.model, self.names, self.classifier = model, names, classifier

    def output(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        frame = _frame(columns, self.names)
        if len(frame) > ONE_THREAD_ROWS:  # a batch split: every thread helps
            return self._run(frame)
        with _one_thread():
            return self._run(frame)

    def _run(self, frame: Any) -> np.ndarray:
        return self.model.predict_proba(frame) if self.classifier else np.asarray(self.model.predict(frame))


class Onnx:
    form = "onnx"

    def __init__(self, data: bytes, classifier: bool) -> None:
        self.data, self.classifier = data, classifier
        self._session: Any = None
        self._inputs: list[tuple[str, Any]] = []

    def __getstate__(self) -> dict[str, Any]:
        return {"data": self.data, "classifier": self.classifier, "_session": None, "_inputs": []}

    def session(self) -> Any:
        if self._session is None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1  # one row: threads only cost
            self._session = onnxruntime.InferenceSession(self.data, options, providers=["CPUExecutionProvider"])
            kinds = {"tensor(double)": np.float64, "tensor(float)": np.float32, "tensor(string)": object}
            self._inputs = [(i.name, kinds.get(i.type, np.float32)) for i in self._session.get_inputs()]
        return self._session

    def output(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        session = self.session()
        feed = {}
        for name, dtype in self._inputs:  # the export's feed (see nimbus.automl.export.onnx_inputs)
            values = onnx_strings(columns[name]) if dtype is object else columns[name]
            feed[name] = values.astype(dtype, copy=False).reshape(-1, 1)
        outputs = session.run(None, feed)
        return np.asarray(outputs[1], dtype=np.float64) if self.classifier else np.asarray(outputs[0]).ravel()


class Pyfunc:
    form = "pyfunc"
    classifier = False

    def __init__(self, model: Any, names: tuple[str, ...]) -> None:
        self.model, self.names = model, names

    def output(self, columns: dict[str, np.ndarray]) -> Any:
        return self.model.predict(_frame(columns, self.names))
