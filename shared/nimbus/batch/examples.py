"""The example models and data of the batch demo, tests and benchmark: customer churn.

Twenty numeric features drive a hidden churn probability (linear part plus an
interaction the boosted model can learn); a logistic regression and a
HistGradientBoosting classifier are registered as ``churn-lr`` and ``churn-hgb`` with a
signature, an input example, the histogram of their training scores (the drift
reference of every batch report) and the drift reference of their served inputs and scores
(``reference/drift.json``, read by the monitor's check of what ``predict`` serves).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from nimbus.config import Settings

FEATURES = [f"f{j}" for j in range(20)]
SEGMENTS = ["consumer", "business", "enterprise"]


def _truth(x: np.ndarray, seed: int = 42) -> np.ndarray:
    w = np.random.default_rng(seed).normal(size=x.shape[1])
    z = x @ w * 0.5 + 1.5 * np.sin(x[:, 0] * x[:, 1])
    return 1 / (1 + np.exp(-z))


def make_records(n: int, seed: int = 0, bad_rows: int = 0, start: int = 0) -> tuple[pa.Table, np.ndarray]:
    """(records, their hidden labels). ``bad_rows`` rows get planted errors (see ``plant``)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    labels = (rng.random(n) < _truth(x)).astype(np.int8)
    signup = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 365, n), unit="D")
    seen = signup + pd.to_timedelta(rng.integers(0, 300, n), unit="D")
    columns = {"record_id": pa.array(np.char.add("r", np.arange(start, start + n).astype(str)))}
    columns.update({f: pa.array(x[:, j]) for j, f in enumerate(FEATURES)})
    columns["segment"] = pa.array(rng.choice(SEGMENTS, n))
    columns["signup_date"] = pa.array(signup.date)
    columns["last_seen"] = pa.array(seen.date)
    table = pa.table(columns)
    return (plant(table, bad_rows, seed) if bad_rows else table), labels


def plant(table: pa.Table, count: int, seed: int = 0) -> pa.Table:
    """Break ``count`` rows in known ways (cycling: out of range, bad segment, seen before signup)."""
    frame = table.to_pandas()
    rows = np.random.default_rng(seed + 1).choice(len(frame), size=count, replace=False)
    for k, row in enumerate(sorted(rows)):
        kind = k % 3
        if kind == 0:
            frame.loc[row, "f3"] = 99.0
        elif kind == 1:
            frame.loc[row, "segment"] = "martian"
        else:
            frame.loc[row, "last_seen"] = frame.loc[row, "signup_date"] - pd.Timedelta(days=10)
    return pa.Table.from_pandas(frame, preserve_index=False)


def train_models(settings: Settings, n: int = 50_000, promote: bool = True) -> dict[str, str]:
    """Fit, log and register churn-lr and churn-hgb; returns name -> version."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    from nimbus import governance
    from nimbus.batch.report import REFERENCE_PATH
    from nimbus.monitoring.drift import REFERENCE_PATH as DRIFT_REFERENCE_PATH
    from nimbus.serving.samples import training_reference
    from nimbus.stores.registry import Registry

    registry = Registry.for_settings(settings)
    table, y = make_records(n, seed=123)
    x = table.select(FEATURES).to_pandas().astype(np.float64)
    held_out = make_records(min(n, 5000), seed=124)[0].select(FEATURES).to_pandas().astype(np.float64)
    versions = {}
    for name, model in (("churn-lr", LogisticRegression(max_iter=500)),
                        ("churn-hgb", HistGradientBoostingClassifier(max_iter=100, random_state=0))):
        model.fit(x, y)
        scores = model.predict_proba(x)[:, 1]
        with registry.tracked_run("nimbus-batch-models", name) as run:
            run.log_params({"model": type(model).__name__, "rows": n})
            run.log_metrics({"train_accuracy": float(((scores >= 0.5) == y).mean())})
            versions[name] = run.log_sklearn(model, x.head(5), scores[:5], name, predict_fn="predict_proba")
            run.log_json({"hist": np.histogram(scores, 20, range=(0, 1))[0].tolist()}, REFERENCE_PATH)
            run.log_json(training_reference(model, held_out), DRIFT_REFERENCE_PATH)  # rows it was not fitted on
        if promote:
            governance.promote(settings, name, versions[name], reason="example model")
    return versions


def write_records(settings: Settings, target: str, rows: int, bad_rows: int = 0, seed: int = 0,
                  labels: str | None = None) -> str:
    """Write example records (Parquet or CSV by extension) locally or to S3; optionally their labels."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from nimbus.batch.io import FsConfig

    table, y = make_records(rows, seed=seed, bad_rows=bad_rows)
    fs_config = FsConfig.from_settings(settings)
    for uri, data in ((target, table), (labels, pa.table({"record_id": table.column("record_id"),
                                                           "label": pa.array(y)}) if labels else None)):
        if uri is None or data is None:
            continue
        fs, path = fs_config.filesystem(uri)
        if not uri.startswith("s3://"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        with fs.open_output_stream(path) as sink:
            if uri.endswith(".csv"):
                pacsv.write_csv(data, sink)
            else:
                pq.write_table(data, sink, row_group_size=250_000)
    return target
