from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nimbus.recommend.data import DataError, clean_catalogue, clean_interactions, generate, load_dataset


def test_generated_logs_have_a_long_tail_and_users_with_tastes() -> None:
    data = generate(n_users=400, n_items=300, n_categories=10, seed=3)
    counts = data.interactions["item_id"].value_counts()
    top_share = counts.iloc[: len(counts) // 10].sum() / counts.sum()
    assert top_share > 0.4  # a tenth of the items take a large share of events
    events = data.interactions.merge(data.catalogue, on="item_id")
    per_user = events.groupby("user_id")["category"].agg(lambda c: c.value_counts(normalize=True).iloc[0])
    assert per_user.median() > 2 / 10  # a favourite category well above uniform
    assert set(data.interactions["event"].unique()) == {"view", "click", "purchase"}
    assert data.interactions["timestamp"].is_monotonic_increasing


def test_generation_is_reproducible_with_a_seed() -> None:
    a, b = generate(100, 50, seed=11), generate(100, 50, seed=11)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)


def test_logs_load_from_csv_and_parquet_folders(tmp_path: Path) -> None:
    data = generate(50, 40, seed=1)
    (tmp_path / "logs").mkdir()
    half = len(data.interactions) // 2
    data.interactions.iloc[:half].to_parquet(tmp_path / "logs" / "a.parquet")
    frame = data.interactions.iloc[half:].copy()
    frame["timestamp"] = frame["timestamp"].astype("int64") // 10**9  # epoch seconds in CSV
    frame.to_csv(tmp_path / "logs" / "b.csv", index=False)
    data.catalogue.to_csv(tmp_path / "catalogue.csv", index=False)
    loaded = load_dataset(tmp_path / "logs", tmp_path / "catalogue.csv")
    assert len(loaded.interactions) == len(data.interactions)
    assert set(loaded.catalogue["item_id"]) >= set(loaded.interactions["item_id"])


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "event": ["view"]}), "missing column(s) timestamp"),
        (pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "event": ["like"], "timestamp": [1]}),
         "event must be one of view, click, purchase; got 'like' in row(s) [0]"),
        (pd.DataFrame({"user_id": ["u", None], "item_id": ["i", "j"], "event": ["view"] * 2, "timestamp": [1, 2]}),
         "user_id is empty in row(s) [1]"),
        (pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "event": ["view"], "timestamp": ["yesterday-ish"]}),
         "timestamp is not a date/time in row(s) [0]"),
    ],
)
def test_bad_logs_are_refused_naming_the_column_and_rows(frame: pd.DataFrame, message: str) -> None:
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        clean_interactions(frame)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "nope.csv")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match=r"expected a \.csv"):
        load_dataset(tmp_path / "x.json")


def test_items_missing_from_the_catalogue_get_the_unknown_category() -> None:
    catalogue = clean_catalogue(pd.DataFrame({"item_id": ["a"], "category": ["shoes"]}), pd.Series(["a", "b"]))
    assert dict(zip(catalogue["item_id"], catalogue["category"])) == {"a": "shoes", "b": "unknown"}
    assert np.isnan(catalogue["price"]).all()
