"""What drift monitoring sees of a served registry model: its score, its training reference, its samples.

**The score** of one prediction (:func:`score_of`, and :func:`class_scores` / :func:`training_scores`
for arrays, the same rule): a binary classifier's probability of its last class, a multiclass one's top
probability, a regressor's value, a pyfunc model's value when it is one number (else no score).

**The reference** (:func:`training_reference`) is built at training time from held-out rows drawn like
those a model was fitted on (the scores of its own fitted rows are more confident than any it will serve)
— numeric columns binned, string and boolean ones counted (the split the signature MLflow
infers from the same frame makes: numbers are numeric, the rest categorical, dates left out) — and the
model's score on them, by :func:`nimbus.monitoring.drift.build_reference`; AutoML's registration and the
batch example models log it as ``reference/drift.json``.

**Samples** (:class:`PredictionSampler`): a ``predict_sample_rate`` share of the records ``predict``
answers, kept as the rows :func:`nimbus.monitoring.drift.compare` reads (``ts``, ``model_version``,
numeric ``features``, ``categorical`` ones, ``score``), buffered in memory and written to Redis in one
round trip a second (:class:`nimbus.monitoring.samples.SampleBuffer`). Which records are kept is drawn
by geometric gaps, so a request that keeps none costs one comparison.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nimbus.monitoring.drift import build_reference
from nimbus.monitoring.samples import SampleBuffer
from nimbus.stores.redis.live import LiveModelStore

TRAINING_ROWS = 20_000  # a reference is built from at most this many training rows (a bounded predict)
MAX_TEXT = 64  # longer strings (ids, blobs) are no category worth counting


def class_scores(probabilities: Any) -> np.ndarray:
    """The score of each row of a classifier's probabilities (rows x classes)."""
    p = np.asarray(probabilities, dtype=np.float64)
    return p[:, -1] if p.shape[1] <= 2 else p.max(axis=1)


def score_of(prediction: Mapping[str, Any]) -> float | None:
    """The score of one served prediction (``{"label", "probabilities"}`` or ``{"value"}``), or None."""
    probabilities = prediction.get("probabilities")
    if probabilities:
        values = list(probabilities.values())
        return float(values[-1] if len(values) <= 2 else max(values))
    value = prediction.get("value")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def training_scores(model: Any, frame: Any) -> np.ndarray:
    """A fitted scikit-learn model's scores on ``frame``: as :func:`score_of` scores what it serves."""
    from sklearn.base import is_classifier

    if is_classifier(model) and hasattr(model, "predict_proba"):
        return class_scores(model.predict_proba(frame))
    return np.asarray(model.predict(frame), dtype=np.float64).reshape(len(frame))


MAX_CATEGORIES = 50  # a text column with more distinct values is an id or a date, not a category to count


def split_columns(frame: Any) -> tuple[list[Any], list[Any]]:
    """(numeric, categorical) columns of a training DataFrame: numbers; strings, booleans and categories
    of at most MAX_CATEGORIES values (dates, ids, free text and anything else are left out: counted per
    value, a few hundred live samples of them always look drifted)."""
    import pandas as pd
    from pandas.api import types

    numeric, categorical = [], []
    for name in frame.columns:
        dtype = frame[name].dtype
        if types.is_bool_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype) or types.is_object_dtype(dtype) \
                or types.is_string_dtype(dtype):
            if frame[name].nunique(dropna=True) <= MAX_CATEGORIES:
                categorical.append(name)
        elif types.is_numeric_dtype(dtype) and not types.is_complex_dtype(dtype):
            numeric.append(name)
    return numeric, categorical


def training_reference(model: Any, frame: Any, seed: int = 0) -> dict[str, Any]:
    """The drift reference of ``model`` from ``frame`` (its input columns; held-out rows like its training
    data): at most TRAINING_ROWS rows of it, drawn at random, scored by the model."""
    if len(frame) > TRAINING_ROWS:
        frame = frame.sample(TRAINING_ROWS, random_state=seed)
    numeric, categorical = split_columns(frame)
    return build_reference(
        {str(n): frame[n].to_numpy(dtype=np.float64, na_value=np.nan) for n in numeric},
        {str(n): [c for c in map(_category, frame[n].tolist()) if c is not None] for n in categorical},
        training_scores(model, frame))


def _category(value: Any) -> str | None:
    """A categorical value as the reference and the samples both count it (None: not counted)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    return text if len(text) <= MAX_TEXT else None


def sample_row(version: str, record: Mapping[str, Any], prediction: Mapping[str, Any],
               now: float) -> dict[str, Any]:
    """One served record as the row drift reads (a record passed the signature check: numbers are
    numeric features, strings and booleans categorical, nulls left out)."""
    features: dict[str, float] = {}
    categorical: dict[str, str] = {}
    for name, value in record.items():
        if isinstance(value, bool | str):
            if (text := _category(value)) is not None:
                categorical[name] = text
        elif isinstance(value, int | float):
            features[name] = value
    return {"ts": now, "model_version": str(version), "features": features, "categorical": categorical,
            "score": score_of(prediction)}


class PredictionSampler:
    """Keeps a ``rate`` share of served records (each with its prediction) for drift, off the request path.

    ``add`` is all a serving path calls; it costs one comparison for a request none of whose records is
    kept. ``flush`` writes what was kept (a thread does, once a second; on Lambda the invocation does)."""

    def __init__(self, store: LiveModelStore, rate: float, flush_s: float = 1.0) -> None:
        self.rate = rate
        self.buffer = SampleBuffer(store, "prediction-sampler", flush_s)
        self._skip = self._gap()  # records to pass over before the next one kept

    def _gap(self) -> float:
        if self.rate >= 1:
            return 0
        if self.rate <= 0:
            return math.inf
        return math.floor(math.log(1.0 - random.random()) / math.log1p(-self.rate))

    def add(self, model: str, version: str, records: Sequence[Mapping[str, Any]],
            predictions: Sequence[Mapping[str, Any]]) -> None:
        """Sample ``records`` (answered by ``model`` v``version`` with ``predictions``, in order)."""
        n = min(len(records), len(predictions))
        if self._skip >= n:
            self._skip -= n
            return
        i, now = int(self._skip), time.time()
        while i < n:
            self.buffer.keep(model, sample_row(version, records[i], predictions[i], now))
            i += 1 + self._gap()
        self._skip = i - n

    def flush(self) -> int:
        return self.buffer.flush()

    def stop(self) -> None:
        self.buffer.stop()

    def close(self) -> None:
        """Stop the flush thread and write everything still kept (a process shutting down)."""
        self.stop()
        while self.flush() > 0:
            pass
