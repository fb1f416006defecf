"""GPU acceleration through scikit-learn's array API: the same estimators, fitted on torch CUDA tensors.

Only numpy, scikit-learn and (when present) torch are imported, so this module runs on a
GPU machine that has nothing else of Nimbus's stack. ``SCIPY_ARRAY_API=1`` must be set
before scipy or scikit-learn is first imported; ``enable()`` does it when it can and
says so when it is too late.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from collections.abc import Iterator
from typing import Any

# Estimators whose fit/predict run under array_api_dispatch (scikit-learn's list, kept to what we search).
GPU_ALGORITHMS = {"ridge": "Ridge", "lda": "LinearDiscriminantAnalysis", "pca": "PCA"}


def enable() -> bool:
    """Ask scipy for array-API support; False when scipy/sklearn were imported before it was asked."""
    if os.environ.get("SCIPY_ARRAY_API") == "1":
        return True
    if "scipy" in sys.modules or "sklearn" in sys.modules:
        return False
    os.environ["SCIPY_ARRAY_API"] = "1"
    return True


def gpu_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@contextmanager
def on_gpu() -> Iterator[None]:
    """Inside: scikit-learn follows the inputs' namespace (torch CUDA tensors stay on the GPU)."""
    import sklearn

    with sklearn.config_context(array_api_dispatch=True):
        yield


def to_device(array: Any, device: str = "cuda") -> Any:
    import torch

    return torch.as_tensor(array, device=device)


def to_numpy(array: Any) -> Any:
    return array.detach().cpu().numpy() if hasattr(array, "detach") else array


def fit_predict(estimator: Any, x: Any, y: Any | None, device: str = "cuda") -> Any:
    """Fit on the device and return predictions (or the transform) as numpy."""
    with on_gpu():
        xd = to_device(x, device)
        yd = None if y is None else to_device(y, device)
        fitted = estimator.fit(xd, yd) if yd is not None else estimator.fit(xd)
        out = fitted.transform(xd) if hasattr(fitted, "transform") and yd is None else fitted.predict(xd)
    return to_numpy(out)
