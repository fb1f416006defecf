"""The GPU path of the search (scikit-learn array API): checked on any machine, on a real GPU where one is.

On a CPU machine Ray declares a GPU resource it does not have (``num_gpus=1``): that shows which
trials ask for a fraction of it. The estimators are fitted on array-api-strict's simulated
device, where any silent fall-back to numpy raises, and on torch's CPU when torch is there;
a real CUDA GPU is used only where one is (benchmarks/gpu_check.py times it against the CPU).
"""

from __future__ import annotations

import importlib.util
import pickle

import numpy as np
import pandas as pd
import pytest

from nimbus.automl.algorithms import ALGORITHMS, get
from nimbus.automl.gpu import GPU_PER_TRIAL, WORKER_ENV, gpu_available

STRICT_DEVICE = "array_api_strict:device1"
DEVICES = [
    pytest.param(STRICT_DEVICE, marks=pytest.mark.skipif(importlib.util.find_spec("array_api_strict") is None,
                                                         reason="array-api-strict is not installed (dev extra)")),
    pytest.param("cpu", marks=pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                                 reason="torch is not installed (gpu extra)")),
    pytest.param("cuda", marks=pytest.mark.skipif(not gpu_available(), reason="no CUDA GPU on this machine (CI)")),
]


def test_the_gpu_family_is_scikit_learns_array_api_estimators() -> None:
    family = {a.name for a in ALGORITHMS.values() if a.gpu is not None}
    assert family == {"ridge", "logistic", "lda"}
    for name in family:
        task = get(name).tasks[0]
        assert type(get(name).estimator({}, task, 0)).__module__.startswith(
            ("sklearn.linear_model", "sklearn.discriminant_analysis")), name


def on_device(params: dict) -> bool:
    return get(params["algorithm"]).on_device(params)


def test_only_array_api_configurations_go_to_the_device() -> None:
    assert on_device({"algorithm": "ridge", "alpha": 1.0})
    assert on_device({"algorithm": "logistic", "C": 1.0})
    assert on_device({"algorithm": "lda", "solver": "svd"})
    assert not on_device({"algorithm": "lda", "solver": "lsqr"})  # scipy's least squares: CPU only
    assert not on_device({"algorithm": "hist_gb"})


@pytest.fixture(scope="module")
def ray_with_a_gpu():
    """A local Ray that declares one GPU (there need be none): Ray schedules by the declared resources."""
    import ray

    if ray.is_initialized():  # a session-wide local Ray (no GPU): this module needs its own
        ray.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()  # the next job's ray_session starts the usual local Ray


def mixed_frame(task: str, rows: int = 400) -> pd.DataFrame:
    """Numbers with gaps, a category and a string label: the preprocessing runs on the CPU, the rest on the device."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"a": rng.normal(size=rows), "b": rng.normal(size=rows),
                          "colour": rng.choice(["red", "green", "blue"], rows)})
    signal = 2 * frame["a"] - frame["b"] + frame["colour"].map({"red": 1.0, "green": 0.0, "blue": -1.0})
    frame.loc[rng.choice(rows, 30, replace=False), "b"] = np.nan
    if task == "classification":
        frame["y"] = np.where(signal + rng.normal(scale=0.5, size=rows) > 0, "yes", "no")
    else:
        frame["y"] = signal + rng.normal(scale=0.1, size=rows)
    return frame


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("params", [{"algorithm": "ridge", "alpha": 0.5},
                                    {"algorithm": "logistic", "C": 2.0},
                                    {"algorithm": "lda", "solver": "svd"}], ids=lambda p: p["algorithm"])
def test_a_pipeline_fitted_on_the_device_is_a_plain_pipeline_that_predicts_like_the_cpu_one(
        ray_with_a_gpu, device: str, params: dict) -> None:
    from nimbus.automl.gpu import fit_on_device
    from nimbus.automl.profile import profile
    from nimbus.automl.space import pipeline

    task = "regression" if params["algorithm"] == "ridge" else "classification"
    frame = mixed_frame(task)
    prof = profile(frame, "y")
    x, y = frame.drop(columns=["y"]), frame["y"]
    # Fitted in a Ray worker with SCIPY_ARRAY_API=1 from its runtime environment, as in a search.
    remote = ray_with_a_gpu.remote(num_gpus=GPU_PER_TRIAL, runtime_env={"env_vars": dict(WORKER_ENV)})
    on_device_model = ray_with_a_gpu.get(remote(fit_on_device).remote(pipeline(params, prof), x, y, device))
    on_cpu = pipeline(params, prof).fit(x, y)
    model = pickle.loads(pickle.dumps(on_device_model))  # exportable like any other
    assert type(model) is type(on_cpu) and type(model[-1]) is type(on_cpu[-1])
    assert isinstance(model[-1].coef_, np.ndarray)
    tolerance = 1e-3 if device.startswith("cuda") else 1e-6  # float32 on CUDA
    if task == "classification":
        assert list(model.classes_) == ["no", "yes"]
        assert np.mean(model.predict(x) == on_cpu.predict(x)) >= 0.99
        np.testing.assert_allclose(model.predict_proba(x), on_cpu.predict_proba(x), atol=tolerance * 10)
    else:
        np.testing.assert_allclose(model.predict(x), on_cpu.predict(x), rtol=tolerance, atol=tolerance)


@pytest.mark.slow
def test_gpu_family_trials_ask_for_a_fraction_of_a_gpu_and_the_others_do_not(ray_with_a_gpu, tmp_path) -> None:
    from sklearn.datasets import load_breast_cancer

    from nimbus.automl.profile import profile
    from nimbus.automl.search import SearchData, plan_steps, run_search

    frame = load_breast_cancer(as_frame=True).frame
    frame["target"] = np.where(frame["target"] == 1, "benign", "malignant")
    prof = profile(frame, "target")
    x, y = frame.drop(columns=["target"]), frame["target"]
    data = SearchData(x, y, plan_steps(y, prof), prof, "roc_auc")
    trials = run_search(data, ["logistic", "knn"], budget_s=120, max_trials=6, concurrency=2, seed=0,
                        storage=str(tmp_path), device=STRICT_DEVICE if importlib.util.find_spec("array_api_strict") else "cpu")
    on_gpu = [t for t in trials if t["params"]["algorithm"] == "logistic"]
    on_cpu = [t for t in trials if t["params"]["algorithm"] == "knn"]
    assert on_gpu and on_cpu, [t["params"] for t in trials]
    assert all(t["gpu"] == GPU_PER_TRIAL and t["device"] != "cpu" for t in on_gpu), on_gpu
    assert all(t["gpu"] == 0 and t["device"] == "cpu" for t in on_cpu), on_cpu
    assert max(t["score"] for t in on_gpu) > 0.95  # the device fits are real models


@pytest.mark.slow
def test_without_a_device_no_trial_asks_for_a_gpu(ray_with_a_gpu, tmp_path) -> None:
    from nimbus.automl.gpu import search_device
    from nimbus.automl.profile import profile
    from nimbus.automl.search import SearchData, plan_steps, run_search

    assert search_device(False, 1.0) is None and search_device(None, 0.0) is None
    assert search_device(None, 1.0) == "cuda" and search_device(True, 2.0) == "cuda"
    frame = mixed_frame("regression")
    prof = profile(frame, "y")
    x, y = frame.drop(columns=["y"]), frame["y"]
    trials = run_search(SearchData(x, y, plan_steps(y, prof), prof, "r2"), ["ridge"], budget_s=60, max_trials=3,
                        concurrency=2, storage=str(tmp_path), device=search_device(False, 1.0))
    assert trials and all(t["gpu"] == 0 and t["device"] == "cpu" for t in trials)
