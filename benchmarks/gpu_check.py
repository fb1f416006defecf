"""Prove the GPU path of AutoML on a GPU machine: the same scikit-learn estimators fitted on
the CPU (numpy) and on the GPU (torch CUDA tensors through the array API), timed, and
their results compared.

    SCIPY_ARRAY_API=1 PYTHONPATH=shared python3 benchmarks/gpu_check.py [--rows 2000000 --cols 100] [--search 45]

Then, with ``--search S`` (S > 0; needs ray[tune], optuna and pandas too), the AutoML search
itself on a local Ray that sees the GPU: S seconds with the GPU family on the GPU (a quarter
of it per trial) against S seconds all on the CPU, on the same data; it prints the trials
each ran, how many used the GPU and the best score.

Needs numpy, scikit-learn and torch only. On a machine without a GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("SCIPY_ARRAY_API", "1")  # before scipy/sklearn are imported
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "shared"))

import numpy as np

from nimbus.automl.gpu import fit_predict, gpu_available


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--cols", type=int, default=100)
    parser.add_argument("--search", type=float, default=45, help="seconds per AutoML search run (0: none)")
    parser.add_argument("--search-rows", type=int, default=200_000)
    args = parser.parse_args()
    if not gpu_available():
        print("no CUDA GPU here (torch.cuda.is_available() is False): nothing to check")
        return
    import sklearn
    import torch
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import Ridge

    print(f"{torch.cuda.get_device_name(0)}; torch {torch.__version__}; scikit-learn {sklearn.__version__}; "
          f"{os.cpu_count()} CPU cores; {args.rows:,} x {args.cols} float32")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.rows, args.cols)).astype(np.float32)
    w = rng.normal(size=args.cols).astype(np.float32)
    y_reg = x @ w + rng.normal(size=args.rows).astype(np.float32)
    y_cls = (y_reg > 0).astype(np.int64)
    cases = [
        ("Ridge (svd solver)", lambda: Ridge(alpha=1.0, solver="svd"), y_reg),  # the solver the GPU path uses
        ("PCA(10)", lambda: PCA(n_components=10, svd_solver="full"), None),
        ("LinearDiscriminantAnalysis", lambda: LinearDiscriminantAnalysis(), y_cls),
    ]
    print(f"{'estimator':<28}{'CPU s':>9}{'GPU s':>9}{'speed-up':>10}  agreement")
    for name, make, y in cases:
        def cpu(make=make, y=y):  # bound now: called within this iteration
            model = make()
            return model.fit_transform(x) if y is None else model.fit(x, y).predict(x)

        def gpu(make=make, y=y):
            out = fit_predict(make(), x, y)
            torch.cuda.synchronize()
            return out

        gpu()  # warm-up: CUDA context, kernels
        cpu_s, cpu_out = timed(cpu, repeat=1)
        gpu_s, gpu_out = timed(gpu)
        if y is None:  # PCA components are defined up to sign
            norms = np.linalg.norm(cpu_out, axis=0) * np.linalg.norm(gpu_out, axis=0)
            agree = f"max |corr| diff {np.max(np.abs(np.abs(np.sum(cpu_out * gpu_out, 0)) / norms - 1)):.1e}"
        elif y.dtype == np.int64:
            agree = f"{np.mean(cpu_out == gpu_out):.4%} same labels"
        else:
            agree = f"max rel diff {np.max(np.abs(cpu_out - gpu_out)) / np.max(np.abs(cpu_out)):.1e}"
        print(f"{name:<28}{cpu_s:>9.2f}{gpu_s:>9.3f}{cpu_s / gpu_s:>9.0f}x  {agree}")
    if args.search > 0:
        search_check(args.search, args.search_rows, args.cols)


def search_check(seconds: float, rows: int, cols: int, device: str = "cuda", num_gpus: float | None = None) -> None:
    """The AutoML search with and without the device, on the same regression data and budget."""
    try:
        import pandas as pd
        import ray
    except ImportError as exc:
        print(f"search: skipped ({exc.name} is not installed; `pip install -e .` brings ray[tune], optuna, pandas)")
        return
    from nimbus.automl.profile import profile
    from nimbus.automl.search import SearchData, plan_steps, run_search

    rng = np.random.default_rng(1)
    x = pd.DataFrame(rng.normal(size=(rows, cols)), columns=[f"x{i}" for i in range(cols)])
    frame = x.assign(y=x.to_numpy() @ rng.normal(size=cols) + rng.normal(size=rows))
    prof = profile(frame, "y", "regression")
    y = frame["y"]
    x = frame.drop(columns=["y"])
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False,
             num_gpus=num_gpus)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        print(f"\nAutoML search, {rows:,} x {cols}, ridge/elastic_net/hist_gb, {seconds:.0f} s each, "
              f"{cpus} trials at a time, Ray sees {ray.cluster_resources().get('GPU', 0):g} GPU")
        print(f"{'run':<28}{'trials':>8}{'on GPU':>8}{'ridge trials':>14}{'best r2':>10}")
        for label, where in (("all on the CPU", None), (f"GPU family on {device}", device)):
            data = SearchData(x, y, plan_steps(y, prof), prof, "r2")
            trials = run_search(data, ["ridge", "elastic_net", "hist_gb"], seconds, None, cpus, device=where)
            ridge = sum(t["params"]["algorithm"] == "ridge" for t in trials)
            used = sum(t["gpu"] > 0 for t in trials)
            print(f"{label:<28}{len(trials):>8}{used:>8}{ridge:>14}{max(t['score'] for t in trials):>10.4f}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
