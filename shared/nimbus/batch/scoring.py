"""What runs on Spark executors in the scoring pass: read a split, check every rule, score the
valid records with each model, write a scored and a quarantine part; and the merge of the tasks'
counts and score statistics on the driver."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from nimbus.batch.io import FsConfig, Split
from nimbus.batch.models import ResolvedModel
from nimbus.batch.sinks import RunFolders
from nimbus.validation.schema import RecordSchema

BINS = 20  # histogram bins of each model's scores


def score_splits(splits: Iterable[Split], payloads: dict[str, bytes], fs_config: FsConfig, schema: RecordSchema,
                 models: list[ResolvedModel], folders: RunFolders, run_key: str,
                 duplicates: frozenset[str] = frozenset()) -> Iterator[dict[str, Any]]:
    """One Spark partition: unpickle the estimators once, then score each split, single-threaded."""
    import cloudpickle
    from threadpoolctl import threadpool_limits

    estimators = {name: cloudpickle.loads(blob) for name, blob in payloads.items()}
    # One thread per task, whatever the executor's environment: Spark runs a task per core, and OpenMP's or
    # BLAS's own threads on top would only oversubscribe them (HistGradientBoosting's OpenMP spins).
    with threadpool_limits(1):
        for split in splits:
            yield score_split(split, fs_config, schema, models, estimators, folders, run_key, duplicates)


def score_split(split: Split, fs_config: FsConfig, schema: RecordSchema, models: list[ResolvedModel],
                estimators: dict[str, Any], folders: RunFolders, run_key: str,
                duplicates: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Runs in a Spark task: read, check, score, write. Returns counts and score statistics.

    ``duplicates``: the ids more than one record of the whole input has (found by the driver);
    each of those records fails the schema's unique-id rule."""
    import pandas as pd
    import pyarrow as pa

    from nimbus.batch.io import read_split, write_parquet
    from nimbus.validation.arrow import check

    clock = time.perf_counter()
    table = read_split(fs_config, split)
    seconds = {"read": time.perf_counter() - clock}
    clock = time.perf_counter()
    rules = [*schema.compiled(), schema.unique_rule()]
    verdict = check(table, schema, rules, duplicates=duplicates)
    seconds["validate"] = time.perf_counter() - clock
    clock = time.perf_counter()
    valid = verdict.valid
    n, n_valid = table.num_rows, int(valid.sum())
    out: dict[str, Any] = {"records": n, "scored": n_valid, "quarantined": n - n_valid,
                           "failures": {r.name: int(verdict.failures[r.name].sum()) for r in rules},
                           "stats": {}, "agree": {}, "seconds": seconds}
    scores: dict[str, np.ndarray] = {}
    if n_valid:
        idx = np.flatnonzero(valid)
        columns = {"run_key": pa.array([run_key] * n_valid),
                   schema.id: verdict.typed[schema.id].take(pa.array(idx))}
        for model in models:
            x = np.column_stack([verdict.typed[c].to_numpy(zero_copy_only=False)[idx] for c in model.inputs])
            frame = pd.DataFrame(x, columns=list(model.inputs))
            s = estimators[model.name].score(frame)  # a ServedModel (nimbus.serving.models)
            scores[model.name] = np.asarray(s, dtype=np.float64)
            columns[f"score__{model.name}"] = pa.array(scores[model.name])
            columns[f"version__{model.name}"] = pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(n_valid, np.int32)), pa.array([model.version]))
            lo, hi = (0.0, 1.0) if model.kind == "classifier" else (float(s.min()), float(s.max()) or 1.0)
            out["stats"][model.name] = {
                "hist": np.histogram(np.clip(s, 0, 1) if model.kind == "classifier" else s, BINS,
                                     range=(0.0, 1.0) if model.kind == "classifier" else None)[0].tolist(),
                "sum": float(s.sum()), "sumsq": float((s * s).sum()), "min": float(s.min()), "max": float(s.max()),
                "range": [lo, hi],
            }
        names = [m.name for m in models]
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                same = np.sum((scores[a] >= 0.5) == (scores[b] >= 0.5))
                out["agree"][f"{a}|{b}"] = {"same_side": int(same), "sum_ab": float((scores[a] * scores[b]).sum())}
        seconds["score"] = time.perf_counter() - clock
        clock = time.perf_counter()
        write_parquet(fs_config, pa.table(columns), str(folders.scored_part(split.index)))
    if n - n_valid:
        bad = np.flatnonzero(~valid)
        quarantine = table.take(pa.array(bad)).append_column(
            "reasons", pa.array(verdict.reasons(schema, rules), pa.list_(pa.string())))
        quarantine = quarantine.append_column("run_key", pa.array([run_key] * len(bad)))
        write_parquet(fs_config, quarantine, str(folders.quarantine_part(split.index)))
    seconds["write"] = time.perf_counter() - clock
    return out


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's totals from its tasks' answers."""
    total: dict[str, Any] = {"records": 0, "scored": 0, "quarantined": 0, "failures": {}, "stats": {}, "agree": {},
                             "task_seconds": {}}
    for part in parts:
        for stage, sec in part.get("seconds", {}).items():
            total["task_seconds"][stage] = total["task_seconds"].get(stage, 0.0) + sec
        for key in ("records", "scored", "quarantined"):
            total[key] += part[key]
        for rule, count in part["failures"].items():
            total["failures"][rule] = total["failures"].get(rule, 0) + count
        for name, st in part["stats"].items():
            acc = total["stats"].setdefault(name, {"hist": [0] * BINS, "sum": 0.0, "sumsq": 0.0,
                                                   "min": np.inf, "max": -np.inf, "range": st["range"]})
            acc["hist"] = [a + b for a, b in zip(acc["hist"], st["hist"], strict=True)]
            acc["sum"] += st["sum"]
            acc["sumsq"] += st["sumsq"]
            acc["min"], acc["max"] = min(acc["min"], st["min"]), max(acc["max"], st["max"])
        for pair, ag in part["agree"].items():
            acc = total["agree"].setdefault(pair, {"same_side": 0, "sum_ab": 0.0})
            acc["same_side"] += ag["same_side"]
            acc["sum_ab"] += ag["sum_ab"]
    return total
