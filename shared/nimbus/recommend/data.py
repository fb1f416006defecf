"""Interaction logs and item catalogues: loading them, checking them, and making them up.

A log has one row per event: ``user_id, item_id, event (view|click|purchase), timestamp``.
A catalogue, optional, has ``item_id, category`` and optionally ``price``. Both are read
from CSV or Parquet, a single file or a folder of parts, locally or from S3.

``generate`` makes a realistic synthetic log so the demo and tests need no download:
long-tail item popularity (Zipf), users whose latent tastes favour a few categories,
and sessions in which views lead to clicks and clicks to purchases.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nimbus.errors import InvalidInput
from nimbus.recommend.ranking import EVENT_TYPES, EVENT_WEIGHT

__all__ = ["EVENT_TYPES", "EVENT_WEIGHT", "DataError", "Dataset", "generate", "load_dataset"]

LOG_COLUMNS = ("user_id", "item_id", "event", "timestamp")


class DataError(InvalidInput):
    """An interaction log or catalogue does not have the expected shape."""


@dataclass(frozen=True)
class Dataset:
    interactions: pd.DataFrame  # user_id, item_id (str), event (category), timestamp (UTC datetime)
    catalogue: pd.DataFrame  # item_id (str), category (str), price (float, may be NaN)


def _read_one(data: bytes | Path, name: str) -> pd.DataFrame:
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    if name.endswith((".parquet", ".pq")):
        return pd.read_parquet(source)
    if name.endswith((".csv", ".csv.gz")):
        return pd.read_csv(source)
    raise DataError(f"{name}: expected a .csv, .csv.gz or .parquet file")


def read_table(location: str | Path) -> pd.DataFrame:
    """Read a CSV/Parquet file or a folder of them, from a path or an ``s3://bucket/key`` URI."""
    text = str(location)
    if text.startswith("s3://"):
        from nimbus.config import get_settings
        from nimbus.stores.objects import ObjectStore, S3Uri

        uri = S3Uri.parse(text)
        bucket, key = uri.bucket, uri.key
        store = ObjectStore.for_settings(get_settings())
        keys = [key] if key and not key.endswith("/") else []
        if not keys:
            keys = [k for k in store.list_keys(bucket, key) if k.endswith((".csv", ".csv.gz", ".parquet", ".pq"))]
        if not keys:
            raise DataError(f"{text}: no CSV or Parquet files there")
        return pd.concat([_read_one(store.get_bytes(bucket, k), k) for k in sorted(keys)], ignore_index=True)
    path = Path(location)
    if path.is_dir():
        parts = sorted(p for p in path.rglob("*") if p.name.endswith((".csv", ".csv.gz", ".parquet", ".pq")))
        if not parts:
            raise DataError(f"{path}: no CSV or Parquet files in this folder")
        return pd.concat([_read_one(p, p.name) for p in parts], ignore_index=True)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    return _read_one(path, path.name)


def clean_interactions(frame: pd.DataFrame) -> pd.DataFrame:
    """Check and normalise a log; the error names the column and the first bad rows."""
    missing = [c for c in LOG_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"interaction log: missing column(s) {', '.join(missing)}; expected {', '.join(LOG_COLUMNS)}")
    out = frame.loc[:, list(LOG_COLUMNS)].copy()
    for column in ("user_id", "item_id"):
        if out[column].isna().any():
            rows = out.index[out[column].isna()][:3].tolist()
            raise DataError(f"interaction log: {column} is empty in row(s) {rows}")
        out[column] = out[column].astype(str)
    bad = ~out["event"].isin(EVENT_TYPES)
    if bad.any():
        rows = out.index[bad][:3].tolist()
        raise DataError(f"interaction log: event must be one of {', '.join(EVENT_TYPES)}; "
                        f"got {out.loc[bad, 'event'].iloc[0]!r} in row(s) {rows}")
    stamps = out["timestamp"]
    if pd.api.types.is_numeric_dtype(stamps):
        out["timestamp"] = pd.to_datetime(stamps, unit="s", utc=True)
    else:
        out["timestamp"] = pd.to_datetime(stamps, utc=True, errors="coerce", format="mixed")
    if out["timestamp"].isna().any():
        rows = out.index[out["timestamp"].isna()][:3].tolist()
        raise DataError(f"interaction log: timestamp is not a date/time in row(s) {rows}")
    out["event"] = pd.Categorical(out["event"], categories=EVENT_TYPES)
    return out.sort_values("timestamp", kind="stable").reset_index(drop=True)


def clean_catalogue(frame: pd.DataFrame | None, item_ids: pd.Series) -> pd.DataFrame:
    """A catalogue covering every logged item; items it lacks get category 'unknown'."""
    if frame is None:
        frame = pd.DataFrame({"item_id": [], "category": []})
    if "item_id" not in frame.columns or "category" not in frame.columns:
        raise DataError("catalogue: expected columns item_id, category (and optionally price)")
    out = frame.loc[:, [c for c in ("item_id", "category", "price") if c in frame.columns]].copy()
    out["item_id"] = out["item_id"].astype(str)
    out["category"] = out["category"].fillna("unknown").astype(str)
    if "price" not in out.columns:
        out["price"] = np.nan
    out = out.drop_duplicates("item_id", keep="last")
    known = set(out["item_id"])
    extra = sorted(set(item_ids.unique()) - known)
    if extra:
        out = pd.concat([out, pd.DataFrame({"item_id": extra, "category": "unknown", "price": np.nan})])
    return out.reset_index(drop=True)


def load_dataset(interactions: str | Path, catalogue: str | Path | None = None) -> Dataset:
    logs = clean_interactions(read_table(interactions))
    return Dataset(logs, clean_catalogue(read_table(catalogue) if catalogue else None, logs["item_id"]))


def generate(
    n_users: int = 5000,
    n_items: int = 2000,
    n_categories: int = 20,
    days: int = 60,
    sessions_per_user: float = 6.0,
    seed: int = 7,
    start: str = "2026-09-01",
) -> Dataset:
    """A synthetic log with structure a recommender can learn (and a popularity baseline can't).

    Items: a category, a latent vector near their category's centre, a Zipf popularity.
    Users: a taste vector mixing one to three favourite categories. In a session a user
    browses items drawn from softmax(taste . item + log popularity); each view is clicked
    with a probability rising with the match, each click bought with a smaller one.
    """
    rng = np.random.default_rng(seed)
    dim = 16
    centres = rng.normal(size=(n_categories, dim))
    item_cat = rng.integers(0, n_categories, n_items)
    item_vec = centres[item_cat] + 0.6 * rng.normal(size=(n_items, dim))
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9  # long tail
    item_pop_log = np.log(rng.permutation(popularity))
    price = np.round(np.exp(rng.normal(3.0, 0.8, n_items)), 2)

    favourites = [rng.choice(n_categories, size=rng.integers(1, 4), replace=False) for _ in range(n_users)]
    taste = np.stack([centres[f].mean(axis=0) for f in favourites]) + 0.3 * rng.normal(size=(n_users, dim))
    taste /= np.linalg.norm(taste, axis=1, keepdims=True)

    t0 = pd.Timestamp(start, tz="UTC").value // 10**9
    span = days * 86400
    users, items, events, stamps = [], [], [], []
    n_sessions = rng.poisson(sessions_per_user, n_users) + 1
    for user in range(n_users):
        affinity = 1.2 * (item_vec @ taste[user]) + item_pop_log
        prob = np.exp(affinity - affinity.max())
        prob /= prob.sum()
        for _ in range(n_sessions[user]):
            start_s = t0 + rng.integers(0, span)
            length = rng.integers(2, 12)
            viewed = rng.choice(n_items, size=length, p=prob)
            offsets = np.sort(rng.integers(0, 1800, length))
            match = 1.0 / (1.0 + np.exp(-(item_vec[viewed] @ taste[user] - 1.0)))
            clicked = rng.random(length) < 0.15 + 0.5 * match
            bought = clicked & (rng.random(length) < 0.25)
            for j in range(length):
                users.append(user)
                items.append(viewed[j])
                events.append(0)
                stamps.append(start_s + offsets[j])
                if clicked[j]:
                    users.append(user); items.append(viewed[j]); events.append(1); stamps.append(start_s + offsets[j] + 5)  # noqa: E702
                if bought[j]:
                    users.append(user); items.append(viewed[j]); events.append(2); stamps.append(start_s + offsets[j] + 60)  # noqa: E702
    log = pd.DataFrame({
        "user_id": np.char.add("u", np.asarray(users).astype(str)),
        "item_id": np.char.add("i", np.asarray(items).astype(str)),
        "event": pd.Categorical.from_codes(events, categories=EVENT_TYPES),
        "timestamp": pd.to_datetime(np.asarray(stamps), unit="s", utc=True),
    }).sort_values("timestamp", kind="stable").reset_index(drop=True)
    catalogue = pd.DataFrame({
        "item_id": [f"i{i}" for i in range(n_items)],
        "category": [f"c{c}" for c in item_cat],
        "price": price,
    })
    return Dataset(log, catalogue)
