"""The serving form of a trained ranker: a few arrays, loaded without scikit-learn.

Training fits a scikit-learn ``Pipeline(StandardScaler, LogisticRegression)``; its
decision function is linear, so the scaler folds into the weights:
``z = ((x - mean) / scale) . coef + b = x . (coef / scale) + (b - sum(coef * mean / scale))``.
A test checks the bundle's scores against ``pipeline.predict_proba``. The bundle also
carries a snapshot of the most popular items, the fallback when Redis is unreachable.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nimbus.recommend.ranking import FEATURES
from nimbus.serving.forms import fold_linear

MODEL_NAME = "nimbus-recommender"


@dataclass(eq=False)
class ModelBundle:
    weights: np.ndarray  # float32 (n_features,)
    bias: float
    features: tuple[str, ...] = FEATURES
    popular: list[str] = field(default_factory=list)  # fallback item ids, most popular first
    meta: dict[str, Any] = field(default_factory=dict)  # trained_at, metrics, feature version...
    version: str = "unregistered"  # the registry version, set when it is published

    @classmethod
    def from_pipeline(cls, pipeline: Any, popular: list[str], meta: dict[str, Any]) -> ModelBundle:
        """Fold a fitted StandardScaler + LogisticRegression pipeline into weights and a bias."""
        folded = fold_linear(pipeline)  # the fold the predict function serves linear models by, too
        if folded is None or folded[0].shape[0] != 1:
            raise ValueError(f"not a binary scaler + linear pipeline: {pipeline}")
        coef, intercept = folded
        return cls(coef[0].astype(np.float32), float(intercept[0]), FEATURES, popular, meta)

    def decision(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weights + np.float32(self.bias)

    def probability(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.decision(x)))

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        header = {"bias": self.bias, "features": list(self.features), "popular": self.popular, "meta": self.meta,
                  "version": self.version}
        np.savez(buffer, weights=self.weights, header=np.asarray(json.dumps(header)))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelBundle:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            weights, header = npz["weights"], json.loads(str(npz["header"]))
        bundle = cls(weights.astype(np.float32), float(header["bias"]), tuple(header["features"]),
                     list(header["popular"]), dict(header["meta"]), str(header["version"]))
        if bundle.features != FEATURES or bundle.weights.shape != (len(FEATURES),):
            raise ValueError(f"bundle expects features {bundle.features}; this code builds {FEATURES}")
        return bundle
