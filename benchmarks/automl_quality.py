"""AutoML quality and search speed, with baselines measured in the same run.

    .venv/bin/python benchmarks/automl_quality.py [--budget 60] [--scaling-seconds 30]

Starts its own MongoDB-wire server and S3 emulator (loopback, free ports), a SQLite
MLflow and a local Ray. For each dataset — the four scikit-learn ships (breast_cancer,
digits, wine, diabetes) and two synthetic ones (20k and 200k rows) — it runs a job with
the budget and prints the winner's held-out score next to a default HistGradientBoosting
and a default logistic regression (ridge for regression) fitted on the same split, and
how many configurations were tried. Then trials per minute with 1 and with 2 concurrent
Ray workers on the same search.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "shared"))

import pandas as pd  # noqa: E402

from nimbus.config import Settings  # noqa: E402
from nimbus.local.stack import LocalStack, free_port  # noqa: E402


def datasets() -> dict[str, pd.DataFrame]:
    from sklearn import datasets as d

    out = {}
    for name, loader in (("breast_cancer", d.load_breast_cancer), ("digits", d.load_digits), ("wine", d.load_wine),
                         ("diabetes", d.load_diabetes)):
        out[name] = loader(as_frame=True).frame
    for rows in (20_000, 200_000):
        x, y = d.make_classification(rows, 30, n_informative=12, n_redundant=6, flip_y=0.03, class_sep=0.8,
                                     random_state=rows)
        out[f"synthetic_{rows // 1000}k"] = pd.DataFrame(x, columns=[f"x{i}" for i in range(30)]).assign(target=y)
    return out


def baselines(settings: Settings, path: str, task: str, metric: str) -> dict[str, float]:
    """Default models fitted on the job's own training rows and scored on its own held-out rows
    (the job's split is a hash of each row's position: the same pass gives the same split)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import get_scorer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from nimbus.automl.data import scan
    from nimbus.automl.metrics import scorer_name, sign

    split = scan(settings, path, "target", task)
    train, test = split.training(), split.test
    x_train, y_train = train.drop(columns=["target"]), train["target"]
    x_test, y_test = test.drop(columns=["target"]), test["target"]
    scorer, direction = get_scorer(scorer_name(metric)), sign(metric)
    models = {"default HGB": HistGradientBoostingClassifier() if task == "classification" else HistGradientBoostingRegressor(),
              "default linear": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)
                                              if task == "classification" else Ridge())}
    return {name: direction * float(scorer(m.fit(x_train, y_train), x_test, y_test)) for name, m in models.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=60)
    parser.add_argument("--scaling-seconds", type=float, default=30, help="0: skip the scaling part")
    parser.add_argument("--only", default=None, help="comma-separated dataset names")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="nimbus-automl-bench-"))
    os.environ.update({"NIMBUS_HOME": str(home), "NIMBUS_PROJECT_ROOT": str(ROOT), "NIMBUS_MLFLOW_TRACKING_URI": "",
                       "NIMBUS_MONGO_URL": f"mongodb://127.0.0.1:{free_port()}/",
                       "NIMBUS_AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
                       "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_LOGGING_LEVEL": "WARNING"})
    settings = Settings()
    stack = LocalStack(settings, ephemeral=True)
    stack.up(["mongodb", "s3", "mlflow"])
    try:
        from nimbus.automl.jobs import JobRequest, submit
        from nimbus.automl.runner import ray_session, run_job

        ray_session(settings)
        print(f"{'dataset':<16}{'rows':>8}{'metric':>10}{'winner':>14}{'AutoML':>9}{'def. HGB':>10}"
              f"{'def. lin.':>10}{'configs':>9}{'job s':>7}")
        data = datasets()
        chosen = args.only.split(",") if args.only else list(data)
        for name in chosen:
            frame = data[name]
            path = home / f"{name}.parquet"
            frame.to_parquet(path)
            job = run_job(settings, submit(settings, JobRequest(dataset=str(path), target="target",
                                                                budget_s=args.budget),
                                           owner="benchmark", trusted_paths=True)["_id"])
            base = baselines(settings, str(path), job["profile"]["task"], job["metric"])
            print(f"{name:<16}{len(frame):>8}{job['metric']:>10}{job['winner']['algorithm']:>14}"
                  f"{job['test']['value']:>9.4f}{base['default HGB']:>10.4f}{base['default linear']:>10.4f}"
                  f"{job['trials']:>9}{job['elapsed_s']:>7.0f}")

        if args.scaling_seconds <= 0:  # --scaling-seconds 0: the quality table only
            return
        from nimbus.automl.algorithms import choose
        from nimbus.automl.profile import profile
        from nimbus.automl.search import SearchData, plan_steps, run_search

        frame = data["breast_cancer"]
        prof = profile(frame, "target")
        x, y = frame.drop(columns=["target"]), frame["target"]
        search = SearchData(x, y, plan_steps(y, prof), prof, "roc_auc")
        print(f"\nsearch speed on breast_cancer, {args.scaling_seconds:.0f} s each (actors reused, ASHA on):")
        rates = {}
        for workers in (1, 2):
            start = time.monotonic()
            trials = run_search(search, choose(prof), args.scaling_seconds, None, workers,
                                storage=str(home / f"scaling-{workers}"))
            minutes = (time.monotonic() - start) / 60
            rates[workers] = len(trials) / minutes
            print(f"  {workers} Ray worker(s): {len(trials)} configurations, {rates[workers]:.0f} per minute")
        print(f"  scaling 1 -> 2 workers: {rates[2] / rates[1]:.2f}x (2 cores on this machine)")
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
