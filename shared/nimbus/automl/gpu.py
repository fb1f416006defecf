"""GPU acceleration through scikit-learn's array API: the same estimators, fitted on torch CUDA tensors.

Only numpy, scikit-learn and (when present) torch are imported, so this module runs on a
GPU machine that has nothing else of Nimbus's stack. ``SCIPY_ARRAY_API=1`` must be set
before scipy or scikit-learn is first imported; ``enable()`` does it when it can and
says so when it is too late. The search's GPU fits are Ray tasks whose runtime environment
sets it (``WORKER_ENV``), so their workers dispatch whatever the driver imported.

In a search, the preprocessing (imputer, scaler, one-hot) is fitted on the CPU; only the
numeric matrix goes to the device for the estimator, and the fitted estimator's arrays come
back as numpy, so the pipeline is a plain scikit-learn Pipeline that pickles and predicts
on CPU numpy like any other. Which configurations go to the device is each algorithm's
declaration (``gpu`` in ``algorithms.py``).

A device is named ``cuda``, ``cuda:1`` or ``cpu`` (torch), or ``array_api_strict:device1``:
array-api-strict is the strict reference namespace with simulated devices that scikit-learn
tests its own array-API support with; it lets a CPU machine check that nothing on the device
path silently falls back to numpy.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

GPU_PER_TRIAL = 0.25  # a fraction of one GPU per trial: four small fits share a device
WORKER_ENV = {"SCIPY_ARRAY_API": "1"}  # for Ray workers, which import scipy after this is set
STRICT = "array_api_strict"


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


def search_device(requested: bool | None, cluster_gpus: float) -> str | None:
    """Where the GPU family of a search is fitted: on ``cuda`` when the cluster has GPUs and the
    request does not say no; None (the CPU) otherwise."""
    return "cuda" if requested is not False and cluster_gpus > 0 else None


@contextmanager
def on_gpu() -> Iterator[None]:
    """Inside: scikit-learn follows the inputs' namespace (torch CUDA tensors stay on the GPU)."""
    import sklearn

    with sklearn.config_context(array_api_dispatch=True):
        yield


def to_device(array: Any, device: str = "cuda", float32: bool | None = None) -> Any:
    """A numpy array on ``device``; floats become float32 on CUDA (its fast path) unless told otherwise."""
    array = np.asarray(array)
    if float32 is None:
        float32 = device.startswith("cuda")
    if float32 and array.dtype.kind == "f":
        array = array.astype(np.float32)
    if device.startswith(STRICT):
        import array_api_strict as xp

        return xp.asarray(array, device=xp.Device(device.partition(":")[2] or "CPU_DEVICE"))
    import torch

    return torch.as_tensor(array, device=device.removeprefix("torch:"))


def to_numpy(array: Any) -> Any:
    if hasattr(array, "detach"):  # torch
        return array.detach().cpu().numpy()
    if type(array).__module__.startswith(STRICT):
        import array_api_strict as xp

        return np.asarray(xp.asarray(array, device=xp.Device("CPU_DEVICE")))
    return array


def fit_predict(estimator: Any, x: Any, y: Any | None, device: str = "cuda") -> Any:
    """Fit on the device and return predictions (or the transform) as numpy."""
    with on_gpu():
        xd = to_device(x, device)
        yd = None if y is None else to_device(y, device)
        fitted = estimator.fit(xd, yd) if yd is not None else estimator.fit(xd)
        out = fitted.transform(xd) if hasattr(fitted, "transform") and yd is None else fitted.predict(xd)
    return to_numpy(out)


def fit_on_device(model: Any, x: Any, y: Any, device: str) -> Any:
    """Fit a Pipeline whose last step is array-API capable: its other steps on the CPU, the last on
    ``device``; the fitted last step's arrays are brought back as numpy. Returns ``model``, fitted."""
    from sklearn.base import is_classifier
    from sklearn.utils._array_api import _estimator_with_converted_arrays  # documented in the array API guide

    name, estimator = model.steps[-1]
    xt = model[:-1].fit_transform(x, y)  # a slice shares its steps: the prep is fitted in place
    if hasattr(xt, "toarray"):
        xt = xt.toarray()
    target, classes = np.asarray(y), None
    if is_classifier(estimator):
        classes, target = np.unique(target, return_inverse=True)  # labels (strings too) as codes on the device
    if "solver" in estimator.get_params() and estimator.get_params()["solver"] == "auto":
        estimator.set_params(solver="svd")  # what Ridge uses under the array API anyway, said outright
    with on_gpu():
        estimator.fit(to_device(xt, device), to_device(target, device))
    fitted = _estimator_with_converted_arrays(estimator, to_numpy)
    if classes is not None:
        fitted.classes_ = classes[np.asarray(fitted.classes_).astype(int)]
    model.steps[-1] = (name, fitted)
    return model
