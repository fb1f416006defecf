"""Model performance when labels arrive later: a labels file (record id, label) joined with
a run's results gives AUC/accuracy (classifiers) or RMSE (regressors) per model version,
kept in MongoDB so performance can be followed over runs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nimbus.batch.io import FsConfig, list_inputs, read_split
from nimbus.config import Settings
from nimbus.errors import InvalidInput, NotFound
from nimbus.stores.documents import Collections, DocumentStore


def _read_all(fs: FsConfig, uri: str) -> pa.Table:
    from nimbus.batch.io import plan_splits

    tables = [read_split(fs, s) for s in plan_splits(fs, list_inputs(fs, uri))]
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})


def score_labels(settings: Settings, labels_uri: str, run_key: str, id_column: str = "record_id",
                 label_column: str = "label") -> list[dict[str, Any]]:
    from sklearn.metrics import accuracy_score, mean_squared_error, roc_auc_score

    docs = DocumentStore.for_settings(settings)
    run = docs.collection(Collections.BATCH_RUNS).find_one({"_id": run_key})
    if run is None or run.get("status") != "succeeded":
        raise NotFound(f"no succeeded batch run {run_key}")
    fs = FsConfig.from_settings(settings)
    labels = _read_all(fs, labels_uri)
    missing = [c for c in (id_column, label_column) if c not in labels.column_names]
    if missing:
        raise InvalidInput(f"labels file: missing column(s) {', '.join(missing)}")
    results = _read_all(fs, run["outputs"]["results_uri"])
    labels = labels.select([id_column, label_column]).cast(pa.schema([(id_column, pa.string()),
                                                                       (label_column, pa.float64())]))
    joined = results.join(labels, id_column, join_type="inner")
    if joined.num_rows == 0:
        raise InvalidInput(f"no labelled record matches run {run_key}")
    y = pc.cast(joined.column(label_column), pa.float64()).to_numpy()
    out = []
    for name, version in run["models"].items():
        s = joined.column(f"score__{name}").to_numpy()
        classes = np.unique(y)
        if set(classes.tolist()) <= {0.0, 1.0}:
            metrics = {"accuracy": float(accuracy_score(y, s >= 0.5)),
                       "auc": float(roc_auc_score(y, s)) if len(classes) == 2 else None}
        else:
            metrics = {"rmse": float(np.sqrt(mean_squared_error(y, s)))}
        doc = {"model": name, "version": version, "run_key": run_key, "labelled": int(joined.num_rows),
               "metrics": metrics, "at": datetime.now(UTC)}
        docs.collection(Collections.MODEL_PERFORMANCE).update_one(
            {"_id": f"{run_key}:{name}"}, {"$set": doc}, upsert=True)
        out.append(doc)
    return out


def performance_history(settings: Settings, model: str) -> list[dict[str, Any]]:
    cursor = DocumentStore.for_settings(settings).collection(Collections.MODEL_PERFORMANCE).find(
        {"model": model}, {"_id": 0})
    return list(cursor.sort("at", 1))
