"""What a dataset is, read from the data: the task, each column's kind, missing values, imbalance.

Every refusal is an ``InvalidInput`` naming the problem, raised before any job starts. A refusal
names the target (the caller's own word) but never the data's values or its other columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from nimbus.errors import InvalidInput

Task = Literal["classification", "regression"]
MIN_ROWS = 20


@dataclass
class Profile:
    task: Task
    rows: int
    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    datetime: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # column -> why it is not used
    missing_share: dict[str, float] = field(default_factory=dict)
    cardinality: dict[str, int] = field(default_factory=dict)  # distinct values of each categorical column
    classes: int = 0
    imbalance: float = 1.0  # majority / minority class size

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def infer_task(y: pd.Series) -> Task:
    if y.dtype == object or isinstance(y.dtype, pd.CategoricalDtype) or y.dtype == bool:
        return "classification"
    values = y.dropna()
    integral = np.allclose(values, np.round(values))
    return "classification" if integral and values.nunique() <= 20 else "regression"


def profile(frame: pd.DataFrame, target: str, task: Task | None = None, rows: int | None = None,
            class_counts: dict | None = None, partial: bool = False) -> Profile:
    """Profile ``frame``, which may be a sample of a larger dataset: then ``rows`` is the dataset's
    row count (when known) and ``class_counts`` its exact class counts (the sample may over-represent
    rare classes). ``partial``: the frame is the first rows only, so the class checks are left to
    the pass that reads every row."""
    if target not in frame.columns:
        raise InvalidInput(f"target column {target!r} is not in the dataset")
    rows = len(frame) if rows is None else rows
    if rows < MIN_ROWS:
        raise InvalidInput(f"the dataset has {rows} rows; at least {MIN_ROWS} are needed")
    y = frame[target]
    if y.isna().all():
        raise InvalidInput(f"target column {target!r} is empty")
    task = task or infer_task(y)
    prof = Profile(task=task, rows=rows)
    if task == "classification":
        counts = y.value_counts() if class_counts is None else pd.Series(class_counts).sort_values(ascending=False)
        if len(counts) < 2 and not partial:
            raise InvalidInput(f"target column {target!r} has one class; a classifier needs two")
        if counts.min() < 2 and not partial:
            raise InvalidInput(f"a class of target column {target!r} has a single row; each class needs two")
        prof.classes, prof.imbalance = len(counts), float(counts.max() / counts.min())
    elif not pd.api.types.is_numeric_dtype(y):
        raise InvalidInput(f"target column {target!r} is not numeric; regression needs numbers")
    for name in frame.columns:
        if name == target:
            continue
        col = frame[name]
        prof.missing_share[name] = float(col.isna().mean())
        if col.isna().all():
            prof.dropped[name] = "empty"
        elif pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
            if col.nunique() <= 1:
                prof.dropped[name] = "constant"
            else:
                prof.numeric.append(name)
        elif pd.api.types.is_datetime64_any_dtype(col) or _looks_like_dates(col):
            prof.datetime.append(name)
        else:
            unique = col.nunique()
            if unique <= 1:
                prof.dropped[name] = "constant"
            elif unique > max(50, 0.5 * len(frame)):
                prof.dropped[name] = f"identifier or free text ({unique} distinct values)"
            else:
                prof.categorical.append(name)
                prof.cardinality[name] = int(unique)
    if not (prof.numeric or prof.categorical or prof.datetime):
        raise InvalidInput("no usable feature columns besides the target")
    return prof


def _looks_like_dates(col: pd.Series) -> bool:
    sample = col.dropna().astype(str).head(50)
    if sample.empty or not sample.str.match(r"^\d{4}-\d{2}-\d{2}").all():
        return False
    return pd.to_datetime(sample, errors="coerce").notna().all()
