"""AutoML's large-data path on local files: the one-pass sampler and the incremental refit."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nimbus.automl.data import _split as split_of
from nimbus.automl.data import memory_rows, peek, row_bytes, scan, training_chunks
from nimbus.automl.profile import profile
from nimbus.automl.refit import refit
from nimbus.config import Settings
from nimbus.errors import InvalidInput

TINY = 0.05  # MiB: a budget of the minimum 1,000 rows, so a few thousand rows are "over memory"


def frame(rows: int, seed: int = 0) -> pd.DataFrame:
    """Rows with an id (to follow them), a rare class, a categorical column and missing values."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=rows), rng.normal(size=rows)
    label = np.where(x1 + 0.5 * x2 + rng.normal(scale=0.5, size=rows) > 0, "yes", "no").astype(object)
    label[rng.choice(rows, 40, replace=False)] = "rare"
    plan = rng.choice(["basic", "plus", "pro"], rows)
    x2[rng.choice(rows, rows // 20, replace=False)] = np.nan
    return pd.DataFrame({"id": np.arange(rows), "x1": x1, "x2": x2, "plan": plan, "label": label})


def parquet_parts(folder: Path, data: pd.DataFrame, parts: int) -> Path:
    folder.mkdir()
    for n, rows in enumerate(np.array_split(np.arange(len(data)), parts)):
        data.iloc[rows].to_parquet(folder / f"part-{n:03d}.parquet", row_group_size=7_000)
    return folder


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", automl_memory_mb=TINY)


def test_counts_are_exact_and_the_sample_keeps_every_rare_row_on_a_folder_of_parquet_parts(
        tmp_path: Path, settings: Settings) -> None:
    data = frame(60_000)
    sampled = scan(settings, str(parquet_parts(tmp_path / "parts", data, 3)), "label")
    assert sampled.rows == 60_000 and 0.75 < sampled.train_rows / sampled.rows < 0.85
    assert len(sampled.test) == 1_000  # the test sample is bounded by memory too
    assert sampled.class_counts == data["label"].value_counts().to_dict()
    assert not sampled.fits and sampled.memory_rows == 1_000
    training = sampled.training()  # over memory: the validation rows are not trained on
    assert len(training) < 2_000  # the memory budget, not the dataset, sizes the sample
    test_ids, train_ids = set(sampled.test["id"]), set(sampled.train["id"])
    rare = data.loc[data["label"] == "rare", "id"].to_numpy()
    rare_training = set(rare[split_of(rare) < 2]) | {rare[0]}  # a class's first row always trains
    assert rare_training == set(training.loc[training["label"] == "rare", "id"]) | set(
        sampled.train.loc[sampled.train["label"] == "rare", "id"])  # every one kept, though 40 in 60,000
    assert not test_ids & train_ids and not set(sampled.valid["id"]) & test_ids
    assert abs(training["x1"].mean()) < 0.1 and 0.5 < (training["label"] == "yes").mean() / 0.5 < 1.5
    search = sampled.search_sample(500)
    assert len(search) <= 500 + 50 and (search["label"] == "rare").sum() == (training["label"] == "rare").sum()
    assert set(search["id"]) <= set(training["id"])


def test_a_second_pass_finds_the_same_splits_so_test_rows_never_train(tmp_path: Path, settings: Settings) -> None:
    data = frame(30_000, seed=1)
    sampled = scan(settings, str(parquet_parts(tmp_path / "parts", data, 2)), "label")
    streamed = pd.concat(training_chunks(settings, sampled, batch_rows=4_000))
    assert streamed["id"].is_unique and not set(streamed["id"]) & set(sampled.test["id"])
    assert not set(streamed["id"]) & set(sampled.valid["id"])
    assert len(streamed) < sampled.train_rows < len(data)  # validation rows are left out of the chunks
    assert set(sampled.training()["id"]) <= set(streamed["id"])


def test_small_data_is_sampled_whole_and_csv_reads_like_parquet(tmp_path: Path) -> None:
    data = frame(3_000, seed=2)
    data.loc[::100, "label"] = None  # rows without a target are counted and left out
    path = tmp_path / "small.csv"
    data.to_csv(path, index=False)
    sampled = scan(Settings(home=tmp_path / "home"), str(path), "label")
    assert sampled.fits and sampled.null_target_rows == 30 and sampled.rows == 2_970
    assert len(sampled.training()) == sampled.train_rows == sampled.rows - len(sampled.test)
    assert sorted(set(sampled.training()["id"]) | set(sampled.test["id"])) == data["id"][data["label"].notna()].tolist()
    assert sampled.class_counts == data["label"].value_counts().to_dict()


def test_a_regression_target_is_sampled_uniformly(tmp_path: Path, settings: Settings) -> None:
    data = frame(20_000, seed=3).assign(label=lambda d: d["x1"] * 3 + 1)
    path = tmp_path / "reg.parquet"
    data.to_parquet(path)
    sampled = scan(settings, str(path), "label", task="regression")
    assert sampled.class_counts is None and not sampled.fits and len(sampled.training()) <= 1_000
    assert abs(sampled.training()["label"].mean() - 1) < 0.3


def test_the_memory_budget_is_sized_from_a_row_in_memory() -> None:
    import pyarrow as pa

    narrow = pa.table({"a": np.arange(1_000, dtype=np.float64)})
    wide = pa.table({f"c{i}": np.arange(1_000, dtype=np.float64) for i in range(40)})
    assert row_bytes(wide) == pytest.approx(40 * row_bytes(narrow))
    settings = Settings(automl_memory_mb=512)
    assert memory_rows(settings, row_bytes(narrow)) > memory_rows(settings, row_bytes(wide)) > 100_000


def test_unreadable_and_missing_inputs_are_clear_errors(tmp_path: Path, settings: Settings) -> None:
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(InvalidInput, match="cannot be read"):
        scan(settings, str(tmp_path / "x.parquet"), "y")
    with pytest.raises(InvalidInput, match="no such file"):
        peek(settings, str(tmp_path / "none.csv"))
    pd.DataFrame({"a": range(30), "y": [0, 1] * 15}).to_csv(tmp_path / "ok.csv", index=False)
    with pytest.raises(InvalidInput, match="target column 'z' is not in"):
        scan(settings, str(tmp_path / "ok.csv"), "z")


def test_peek_reads_a_bounded_prefix_and_the_count_from_parquet_footers(tmp_path: Path, settings: Settings) -> None:
    folder = parquet_parts(tmp_path / "parts", frame(30_000), 3)
    head, rows, whole = peek(settings, str(folder), rows=5_000)
    assert rows == 30_000 and not whole and len(head) < 30_000
    head, rows, whole = peek(settings, str(folder))
    assert rows == 30_000 and whole and len(head) == 30_000


@pytest.mark.parametrize(("params", "task", "metric"), [
    ({"algorithm": "logistic", "C": 1.0}, "classification", "roc_auc_ovr"),
    ({"algorithm": "hist_gb", "learning_rate": 0.1, "max_leaf_nodes": 15, "l2_regularization": 1e-3, "max_iter": 50},
     "classification", "accuracy"),
    ({"algorithm": "ridge", "alpha": 1.0}, "regression", "r2"),
])
def test_over_memory_the_refit_reads_every_training_chunk_and_the_model_predicts_raw_rows(
        tmp_path: Path, settings: Settings, params: dict, task: str, metric: str) -> None:
    data = frame(12_000, seed=4)
    if task == "regression":
        data["label"] = 2 * data["x1"] - data["x2"].fillna(0) + data["plan"].map({"basic": 0, "plus": 1, "pro": 3})
    folder = parquet_parts(tmp_path / "parts", data, 2)
    sampled = scan(settings, str(folder), "label", task)
    assert not sampled.fits
    prof = profile(sampled.training(), "label", task, rows=sampled.rows, class_counts=sampled.class_counts)
    model, info = refit(settings, sampled, params, prof, metric, deadline=time.monotonic() + 120)
    streamed = sum(len(c) for c in training_chunks(settings, sampled))
    assert info["training_rows"] == sampled.train_rows and set(info["validation"]["scores"]) >= {"incremental"}
    if params["algorithm"] == "hist_gb":  # the winner on the sample competes with the incremental model
        assert set(info["validation"]["scores"]) == {"in_memory", "incremental"}
    if info["incremental"]:
        assert info["rows"] == streamed > 5 * len(sampled.training()) and info["chunks"] >= 2
        assert info["differs_from_winner"] and info["model"].startswith("sgd_")
    test = sampled.test
    predicted = model.predict(test.drop(columns=["label"]))  # raw rows: strings, missing values
    if task == "classification":
        assert (predicted == test["label"]).mean() > 0.75
        assert model.predict_proba(test.drop(columns=["label"]).head(3)).shape == (3, 3)
    else:
        assert np.corrcoef(predicted, test["label"])[0, 1] > 0.9
