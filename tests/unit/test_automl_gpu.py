"""The GPU path (scikit-learn array API on torch CUDA): checked where a GPU is; skipped cleanly elsewhere.

benchmarks/gpu_check.py times it against the CPU on a GPU machine."""

from __future__ import annotations

import numpy as np
import pytest

from nimbus.automl.gpu import GPU_ALGORITHMS, gpu_available


def test_the_gpu_family_names_scikit_learn_estimators() -> None:
    import sklearn.decomposition
    import sklearn.discriminant_analysis
    import sklearn.linear_model

    modules = (sklearn.linear_model, sklearn.decomposition, sklearn.discriminant_analysis)
    for name in GPU_ALGORITHMS.values():
        assert any(hasattr(m, name) for m in modules), name


@pytest.mark.skipif(not gpu_available(), reason="no CUDA GPU on this machine (CI): benchmarks/gpu_check.py proves it on one")
def test_ridge_on_the_gpu_predicts_like_the_cpu() -> None:
    from sklearn.linear_model import Ridge

    from nimbus.automl.gpu import fit_predict

    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 20)).astype(np.float32)
    y = x @ rng.normal(size=20).astype(np.float32)
    cpu = Ridge(solver="svd").fit(x, y).predict(x)
    np.testing.assert_allclose(fit_predict(Ridge(solver="svd"), x, y), cpu, rtol=1e-3, atol=1e-3)
