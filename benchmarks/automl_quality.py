"""AutoML quality against FLAML and default models, search speed, and the CLI's wall time, in one run.

    pip install -e '.[bench]'   # FLAML and the packages that ship the public tables
    .venv/bin/python benchmarks/automl_quality.py --budget 60
    .venv/bin/python benchmarks/automl_quality.py --budget 12 --only penguins,churn --scaling-seconds 0 --no-cli

Starts its own MongoDB-wire server and S3 emulator (loopback, free ports), a SQLite MLflow and a
local Ray. Tables (``DATASETS``): the four scikit-learn ships, five public tables that ship inside
PyPI packages (palmerpenguins, statsmodels, vega_datasets; nothing is downloaded), a synthetic
3,000-row churn table with a categorical column and missing values, and a synthetic 20k one (the
200k one only with ``--only synthetic_200k``: it is slow).

Per table, one after another so they never share the cores: a Nimbus job with the budget, then
``flaml.AutoML`` with the same time budget, metric, seed 0 and its default estimators, then a
default HistGradientBoosting and a default linear model. Every contender trains on the job's own
training rows and is scored on the job's own held-out rows (the job's split is a hash of each
row's position, so a second ``scan`` finds the same rows) with the job's metric, computed the way
the job computes its held-out figure (``nimbus.automl.evaluation.evaluate``). A Nimbus job that
fails prints ``failed: <reason>`` in its row and counts as a loss. Then the Nimbus jobs' own timings
(``job["timings"]``), trials per minute with 1 and 2 Ray workers (``--scaling-seconds``), and
``nimbus automl run`` on the churn CSV as a subprocess per ``--cli-budgets``: the goal is that with
``--budget 15`` it exits 0 with a registered model and with ``--budget 60`` it ends within 66 s.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "shared"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from nimbus.config import Settings  # noqa: E402
from nimbus.local.stack import LocalStack, free_port  # noqa: E402

# FLAML's names for the job's metrics (the ones a job can pick that FLAML has).
FLAML_METRIC = {"roc_auc": "roc_auc", "roc_auc_ovr": "roc_auc_ovr", "accuracy": "accuracy", "log_loss": "log_loss",
                "f1_macro": "macro_f1", "r2": "r2", "rmse": "rmse", "mae": "mae"}
TIMINGS = ("first_result_s", "search_s", "refit_s", "explain_export_s", "total_s")


@dataclass(frozen=True)
class Table:
    frame: pd.DataFrame
    target: str
    source: str


def _sklearn(name: str) -> Table:
    from sklearn import datasets

    return Table(getattr(datasets, f"load_{name}")(as_frame=True).frame, "target", "scikit-learn")


def _penguins() -> Table:  # 344 rows, 3 species; island and sex categorical; missing values
    from palmerpenguins import load_penguins

    return Table(load_penguins(), "species", "palmerpenguins")


def _statsmodels(name: str, target: str, drop: tuple[str, ...] = ()) -> Table:
    import statsmodels.api as sm

    return Table(getattr(sm.datasets, name).load_pandas().data.drop(columns=list(drop)), target, "statsmodels")


def _cars() -> Table:  # 406 rows, mpg regression; Origin categorical; missing mpg and horsepower
    from vega_datasets import local_data

    frame = local_data.cars().drop(columns=["Name"])
    return Table(frame.assign(Year=frame["Year"].dt.year), "Miles_per_Gallon", "vega_datasets")


def _weather() -> Table:  # 1,461 days, 5 kinds of weather (string labels, two rare)
    from vega_datasets import local_data

    frame = local_data.seattle_weather()
    return Table(frame.assign(month=frame["date"].dt.month).drop(columns=["date"]), "weather", "vega_datasets")


def _churn(rows: int = 3_000) -> Table:
    """Deterministic: tenure, charges, support calls, a contract and a payment method (categorical,
    some missing), missing charges; churn is likelier on month-to-month contracts and many calls."""
    rng = np.random.default_rng(13)
    contract = rng.choice(["month-to-month", "one year", "two year"], rows, p=[0.55, 0.25, 0.2])
    payment = rng.choice(["card", "bank transfer", "electronic check", "mailed check"], rows)
    tenure, calls = rng.integers(1, 72, rows), rng.poisson(1.5, rows)
    charges = rng.normal(65, 25, rows).clip(18, 120).round(2)
    logit = (-1.0 + 1.6 * (contract == "month-to-month") - 0.8 * (contract == "two year") - 0.04 * tenure
             + 0.02 * (charges - 65) + 0.35 * calls + 0.5 * (payment == "electronic check"))
    frame = pd.DataFrame({"tenure_months": tenure, "monthly_charges": charges, "support_calls": calls,
                          "contract": contract, "payment_method": payment,
                          "churned": (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)})
    frame.loc[rng.random(rows) < 0.08, "monthly_charges"] = np.nan
    frame.loc[rng.random(rows) < 0.05, "payment_method"] = None
    return Table(frame, "churned", "synthetic")


def _synthetic(rows: int) -> Table:
    from sklearn.datasets import make_classification

    x, y = make_classification(rows, 30, n_informative=12, n_redundant=6, flip_y=0.03, class_sep=0.8,
                               random_state=rows)
    return Table(pd.DataFrame(x, columns=[f"x{i}" for i in range(30)]).assign(target=y), "target", "synthetic")


DATASETS: dict[str, Callable[[], Table]] = {
    **{name: (lambda name=name: _sklearn(name)) for name in ("breast_cancer", "digits", "wine", "diabetes")},
    "penguins": _penguins,
    "anes96": lambda: _statsmodels("anes96", "vote", drop=("logpopul",)),  # 944 voters: Clinton or Dole
    "fair": lambda: _statsmodels("fair", "affairs"),  # 6,366 rows, time spent in affairs (mostly 0)
    "cars": _cars,
    "seattle_weather": _weather,
    "churn": _churn,
    "synthetic_20k": lambda: _synthetic(20_000),
    "synthetic_200k": lambda: _synthetic(200_000),
}
DEFAULT = [name for name in DATASETS if name != "synthetic_200k"]


@dataclass
class Split:
    x_train: pd.DataFrame
    y_train: pd.Series
    x_test: pd.DataFrame
    y_test: pd.Series
    task: str
    metric: str


def job_split(settings: Settings, path: str, target: str, job: dict[str, Any]) -> Split:
    """The job's own training and held-out rows (scanned as the job scans: with the request's task),
    and its task and metric (worked out as the job does when a failed job has none)."""
    from nimbus.automl.data import scan
    from nimbus.automl.metrics import check_metric
    from nimbus.automl.profile import profile

    split = scan(settings, path, target, job.get("request", {}).get("task"))
    train, test = split.training(), split.test
    task, metric = job.get("profile", {}).get("task"), job.get("metric")
    if not (task and metric):
        prof = profile(train, target, rows=split.rows, class_counts=split.class_counts)
        task, metric = prof.task, check_metric(prof.task, None, prof.classes)
    return Split(train.drop(columns=[target]), train[target], test.drop(columns=[target]), test[target], task, metric)


def held_out(model: Any, split: Split) -> float:
    from nimbus.automl.evaluation import evaluate

    return evaluate(model, split.x_test, split.y_test, split.metric, rounds=0)["value"]


def baselines(split: Split) -> dict[str, float]:
    """A default HistGradientBoosting (string columns as pandas categories) and a default linear model
    (imputed, scaled numbers and one-hot categories) on the job's training rows."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    cats = [c for c in split.x_train.columns if not pd.api.types.is_numeric_dtype(split.x_train[c])]
    nums = [c for c in split.x_train.columns if c not in cats]
    types = {c: pd.CategoricalDtype(split.x_train[c].dropna().unique()) for c in cats}  # unseen in test: missing
    data = Split(split.x_train.astype(types), split.y_train, split.x_test.astype(types), split.y_test,
                 split.task, split.metric)
    classify = split.task == "classification"
    linear = ColumnTransformer([("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), nums),
                                ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                                      OneHotEncoder(handle_unknown="ignore")), cats)])
    models = {"HGB": (HistGradientBoostingClassifier if classify else HistGradientBoostingRegressor)(
                  categorical_features="from_dtype"),
              "linear": make_pipeline(linear, LogisticRegression(max_iter=2000) if classify else Ridge())}
    return {name: held_out(m.fit(data.x_train, data.y_train), data) for name, m in models.items()}


def flaml_automl() -> type:
    """FLAML's AutoML class, imported without its Spark backend (importing that starts a JVM)."""
    spark = {m: sys.modules.pop(m) for m in list(sys.modules) if m.split(".")[0] == "pyspark"}
    sys.modules["pyspark"] = None  # type: ignore[assignment]  # FLAML then takes the no-Spark path
    try:
        from flaml import AutoML
    finally:
        del sys.modules["pyspark"]
        sys.modules.update(spark)
    return AutoML


def run_flaml(split: Split, budget: float) -> tuple[float, int, float]:
    """(held-out score, configurations tried, wall seconds of the fit), in a process of its own: FLAML
    and its boosters (OpenMP thread pools, global settings) then cannot slow the Nimbus jobs after it."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_flaml_fit, split, budget).result()


def _flaml_fit(split: Split, budget: float) -> tuple[float, int, float]:
    automl = flaml_automl()()
    start = time.monotonic()
    automl.fit(split.x_train, split.y_train, task=split.task, metric=FLAML_METRIC[split.metric], time_budget=budget,
               seed=0, verbose=0, n_jobs=-1)
    wall = time.monotonic() - start
    return held_out(automl, split), sum(s.total_iter for s in automl._search_states.values()), wall


def run_nimbus(settings: Settings, path: str, target: str, budget: float) -> tuple[dict[str, Any], str | None, float]:
    """(the job's document, why it failed or None, wall seconds of submit and run)."""
    from nimbus.automl.jobs import JobRequest, get_job, submit
    from nimbus.automl.runner import run_job

    start, job_id = time.monotonic(), None
    try:
        job_id = submit(settings, JobRequest(dataset=path, target=target, budget_s=budget), owner="benchmark",
                        trusted_paths=True)["_id"]
        return run_job(settings, job_id), None, time.monotonic() - start
    except Exception as exc:  # noqa: BLE001 - a failed job is a row of the table, not the end of the run
        doc = get_job(settings, job_id) if job_id else {}
        reason = doc.get("error") or f"{type(exc).__name__}: {exc}"
        return doc, " ".join(str(reason).split())[:100], time.monotonic() - start


def _num(value: float, width: int = 7, digits: int = 4) -> str:
    return f"{'-':>{width}}" if value != value else f"{value:>{width}.{digits}f}"  # NaN: not measured


def quality(settings: Settings, home: Path, names: list[str], budget: float) -> None:
    from nimbus.automl.metrics import sign

    print(f"{'dataset':<16}{'rows':>7}  {'task/metric':<23}{'winner':<15}{'Nimbus':>7}{'FLAML':>7}{'HGB':>7}"
          f"{'linear':>7}{'N cfg':>6}{'F cfg':>6}{'N s':>5}{'F s':>5}  win")
    wins, timings = 0, {}
    for name in names:
        table = DATASETS[name]()
        path = home / f"{name}.parquet"
        table.frame.to_parquet(path)
        with contextlib.redirect_stdout(io.StringIO()):  # Ray Tune's progress tables
            job, failed, nimbus_s = run_nimbus(settings, str(path), table.target, budget)
        split = job_split(settings, str(path), table.target, job)
        problems = [f"failed: {failed}"] if failed else []
        try:
            flaml, flaml_cfg, flaml_s = run_flaml(split, budget)
        except Exception as exc:  # noqa: BLE001 - FLAML's failure is reported like Nimbus's
            flaml, flaml_cfg, flaml_s = np.nan, 0, np.nan
            problems.append(f"FLAML failed: {type(exc).__name__}: {exc}"[:100])
        base = baselines(split)
        kind = ("binary" if split.y_train.nunique() == 2 else "multiclass") if split.task == "classification" \
            else "regression"
        nimbus = job["test"]["value"] if job.get("status") == "succeeded" else np.nan
        win = bool(sign(split.metric) * nimbus >= sign(split.metric) * flaml)  # NaN (a failure): no win
        wins += win
        winner = job["winner"]["algorithm"] if nimbus == nimbus else "failed"
        print(f"{name:<16}{len(table.frame):>7}  {kind + '/' + split.metric:<23}{winner:<15}{_num(nimbus)}"
              f"{_num(flaml)}{_num(base['HGB'])}{_num(base['linear'])}{job.get('trials', 0):>6}{flaml_cfg:>6}"
              f"{_num(nimbus_s, 5, 0)}{_num(flaml_s, 5, 0)}  {'win' if win else '':<5}" + "; ".join(problems),
              flush=True)
        timings[name] = job.get("timings", {})
    print(f"Nimbus matched or beat FLAML on {wins} of {len(names)} tables (a failed job counts as a loss)")
    print(f"\nNimbus job timings (s; '-' where the job document has none):\n{'dataset':<16}"
          + "".join(f"{t:>17}" for t in TIMINGS))
    for name, got in timings.items():
        print(f"{name:<16}" + "".join(_num(got[t], 17, 1) if isinstance(got.get(t), int | float) else f"{'-':>17}"
                                      for t in TIMINGS))


def scaling(home: Path, seconds: float) -> None:
    from nimbus.automl.algorithms import choose
    from nimbus.automl.profile import profile
    from nimbus.automl.search import SearchData, plan_steps, run_search

    frame = _sklearn("breast_cancer").frame
    prof = profile(frame, "target")
    x, y = frame.drop(columns=["target"]), frame["target"]
    search = SearchData(x, y, plan_steps(y, prof), prof, "roc_auc")
    print(f"\nsearch speed on breast_cancer, {seconds:.0f} s each (actors reused, ASHA on):")
    rates = {}
    for workers in (1, 2):
        start = time.monotonic()
        trials = run_search(search, choose(prof), seconds, None, workers, storage=str(home / f"scaling-{workers}"))
        rates[workers] = len(trials) / ((time.monotonic() - start) / 60)
        print(f"  {workers} Ray worker(s): {len(trials)} configurations, {rates[workers]:.0f} per minute")
    print(f"  scaling 1 -> 2 workers: {rates[2] / rates[1]:.2f}x (2 cores on this machine)")


def cli(home: Path, budgets: list[float]) -> None:
    """``nimbus automl run`` on the churn CSV as its own process (this checkout's code, the stack's variables)."""
    csv = home / "churn.csv"
    _churn().frame.to_csv(csv, index=False)
    nimbus = Path(sys.executable).with_name("nimbus")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "shared"), os.environ.get("PYTHONPATH"))
                                                        if p)}
    print(f"\n`nimbus automl run churn.csv --target churned` ({nimbus}); goal: --budget 15 exits 0 with a "
          "registered model, --budget 60 ends within 66 s")
    for budget in budgets:
        start = time.monotonic()
        proc = subprocess.Popen([str(nimbus), "automl", "run", str(csv), "--target", "churned", "--budget", f"{budget:g}"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=3 * budget + 120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        wall = time.monotonic() - start
        try:  # anything the process left in its session (a Ray it started)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        rows = len(re.findall(r"^\s*[│┃|]\s*\d+\s*[│┃|]", out, flags=re.MULTILINE)) if "leaderboard (" in out else 0
        registered = re.search(r"registered \S+\s+v\d+", out) is not None  # rich may wrap the line
        last = next((line.strip() for line in reversed(out.splitlines()) if line.strip()), "")
        print(f"  --budget {budget:<4g} exit {proc.returncode}, {wall:.1f} s wall ({wall / budget:.2f}x the budget), "
              f"leaderboard {'with ' + str(rows) + ' rows' if rows else 'not printed'}, "
              f"model {'registered' if registered else 'not registered'}"
              + ("" if proc.returncode == 0 else f"; last line: {last[:160]}"), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60, help="seconds per Nimbus job and per FLAML fit")
    parser.add_argument("--only", default=None, help=f"comma-separated, of: {', '.join(DATASETS)}")
    parser.add_argument("--scaling-seconds", type=float, default=30, help="0: skip the scaling part")
    parser.add_argument("--cli", action=argparse.BooleanOptionalAction, default=True,
                        help="run `nimbus automl run` as a subprocess per --cli-budgets")
    parser.add_argument("--cli-budgets", default="15,60", help="comma-separated seconds")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else DEFAULT
    if unknown := [n for n in names if n not in DATASETS]:
        parser.error(f"unknown datasets: {', '.join(unknown)}")
    home = Path(tempfile.mkdtemp(prefix="nimbus-automl-bench-"))
    os.environ.update({"NIMBUS_HOME": str(home), "NIMBUS_PROJECT_ROOT": str(ROOT), "NIMBUS_MLFLOW_TRACKING_URI": "",
                       "NIMBUS_MONGO_URL": f"mongodb://127.0.0.1:{free_port()}/",
                       "NIMBUS_AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
                       "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_LOGGING_LEVEL": "WARNING"})
    settings = Settings()
    stack = LocalStack(settings, ephemeral=True)
    stack.up(["mongodb", "s3", "mlflow"])
    try:
        import ray

        from nimbus.automl.runner import ray_session

        ray_session(settings)
        quality(settings, home, names, args.budget)
        if args.scaling_seconds > 0:
            scaling(home, args.scaling_seconds)
        ray.shutdown()  # the CLI's process starts its own
        if args.cli:
            cli(home, [float(b) for b in args.cli_budgets.split(",")])
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
