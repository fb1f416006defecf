"""Batch features from an interaction log: user and item aggregates, embeddings, co-occurrence.

One function, ``compute_features``, serves both the scheduled feature pipeline (all logs)
and training (logs before a cut time), so the model learns from exactly the features it
is served with. Output is a :class:`nimbus.recommend.ranking.FeatureSet`: numpy arrays
only, ready to be written to Redis and read on the request path without pandas.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.decomposition import TruncatedSVD

from nimbus.recommend.data import EVENT_WEIGHT, Dataset
from nimbus.recommend.ranking import RECENT_N, FeatureSet, ItemTable, nearest_by_embedding

EMBED_DIM = 32
COOC_NEIGHBOURS = 30
CATEGORY_POPULAR = 50
POPULAR_N = 500


def _top_per_row(matrix: sparse.csr_matrix, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``m`` largest entries of each row: (indices, values), padded with -1 / 0."""
    n = matrix.shape[0]
    idx = np.full((n, m), -1, dtype=np.int32)
    val = np.zeros((n, m), dtype=np.float32)
    for row in range(n):
        start, end = matrix.indptr[row], matrix.indptr[row + 1]
        if start == end:
            continue
        cols, data = matrix.indices[start:end], matrix.data[start:end]
        take = np.argsort(-data, kind="stable")[:m]
        idx[row, : len(take)] = cols[take]
        val[row, : len(take)] = data[take]
    return idx, val


def compute_features(dataset: Dataset, until: pd.Timestamp | None = None, version: str | None = None) -> FeatureSet:
    """Features from the events before ``until`` (all events when None)."""
    logs = dataset.interactions
    if until is not None:
        logs = logs[logs["timestamp"] < until]
    if logs.empty:
        raise ValueError("no interactions to compute features from")

    catalogue = dataset.catalogue
    item_ids = np.asarray(sorted(set(logs["item_id"]) | set(catalogue["item_id"])), dtype=object)
    item_index = pd.Index(item_ids)
    user_ids = np.asarray(sorted(logs["user_id"].unique()), dtype=object)
    user_index = pd.Index(user_ids)
    n_users, n_items = len(user_ids), len(item_ids)

    u = user_index.get_indexer(logs["user_id"]).astype(np.int32)
    i = item_index.get_indexer(logs["item_id"]).astype(np.int32)
    event = logs["event"].astype(str).to_numpy()
    weight = np.vectorize(EVENT_WEIGHT.get, otypes=[np.float32])(event)

    cat_of = catalogue.set_index("item_id")["category"].reindex(item_ids).fillna("unknown")
    categories = sorted(cat_of.unique())
    item_category = pd.Index(categories).get_indexer(cat_of).astype(np.int32)
    n_cat = len(categories)
    price = catalogue.set_index("item_id")["price"].reindex(item_ids).to_numpy(dtype=np.float64)

    # Item aggregates: weighted popularity, click-through and purchase rates (smoothed).
    views = np.bincount(i[event == "view"], minlength=n_items).astype(np.float64)
    clicks = np.bincount(i[event == "click"], minlength=n_items).astype(np.float64)
    buys = np.bincount(i[event == "purchase"], minlength=n_items).astype(np.float64)
    item_weight = np.bincount(i, weights=weight, minlength=n_items)
    item_num = np.stack([
        np.log1p(item_weight),
        (clicks + 1.0) / (views + 4.0),
        (buys + 0.2) / (clicks + 4.0),
        np.log1p(np.nan_to_num(price, nan=0.0)),
    ], axis=1).astype(np.float32)

    # Embeddings: a truncated SVD of the user x item matrix of log-weighted interactions.
    matrix = sparse.csr_matrix((weight, (u, i)), shape=(n_users, n_items), dtype=np.float32)
    matrix.data = np.log1p(matrix.data)
    dim = max(1, min(EMBED_DIM, n_users - 1, n_items - 1))
    svd = TruncatedSVD(n_components=dim, random_state=0, algorithm="randomized", n_iter=5)
    user_emb = svd.fit_transform(matrix).astype(np.float32)
    item_emb = svd.components_.T.astype(np.float32)
    if dim < EMBED_DIM:  # pad so the layout is fixed whatever the data size
        user_emb = np.pad(user_emb, ((0, 0), (0, EMBED_DIM - dim)))
        item_emb = np.pad(item_emb, ((0, 0), (0, EMBED_DIM - dim)))

    # Co-occurrence: cosine of item columns of the binary user x item matrix.
    binary = (matrix > 0).astype(np.float32).tocsc()
    cooc = (binary.T @ binary).tocsr()
    cooc.setdiag(0)
    cooc.eliminate_zeros()
    norms = np.sqrt(np.asarray(binary.sum(axis=0)).ravel()) + 1e-9
    cooc = sparse.diags(1 / norms) @ cooc @ sparse.diags(1 / norms)
    cooc_idx, cooc_w = _top_per_row(cooc.tocsr(), COOC_NEIGHBOURS)

    by_popularity = np.argsort(-item_weight, kind="stable").astype(np.int32)
    popular = by_popularity[:POPULAR_N]
    cat_popular = np.full((n_cat, CATEGORY_POPULAR), -1, dtype=np.int32)
    for c in range(n_cat):
        members = by_popularity[item_category[by_popularity] == c][:CATEGORY_POPULAR]
        cat_popular[c, : len(members)] = members

    # Users: activity, weighted category counts, embedding, and the last RECENT_N items.
    counts = np.stack([np.bincount(u[event == e], minlength=n_users) for e in ("view", "click", "purchase")], axis=1)
    user_cat = np.zeros((n_users, n_cat), dtype=np.float32)
    np.add.at(user_cat, (u, item_category[i]), weight)
    recent = np.full((n_users, RECENT_N), -1, dtype=np.int32)
    order = np.lexsort((-np.arange(len(u)), u))  # by user, newest first (logs are time-sorted)
    u_sorted, i_sorted = u[order], i[order]
    starts = np.searchsorted(u_sorted, np.arange(n_users))
    ends = np.searchsorted(u_sorted, np.arange(n_users), side="right")
    for user in range(n_users):
        seen: list[int] = []
        for item in i_sorted[starts[user]:ends[user]]:
            if item not in seen:
                seen.append(int(item))
                if len(seen) == RECENT_N:
                    break
        recent[user, : len(seen)] = seen

    items = ItemTable(
        version=version or time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6],
        item_ids=item_ids,
        categories=np.asarray(categories, dtype=object),
        item_category=item_category,
        item_num=item_num,
        item_emb=item_emb,
        cooc_idx=cooc_idx,
        cooc_w=cooc_w,
        popular=popular,
        cat_popular=cat_popular,
    )
    return FeatureSet(
        items=items,
        user_ids=user_ids,
        user_num=np.log1p(counts).astype(np.float32),
        user_cat=user_cat,
        user_emb=user_emb,
        user_recent=recent,
        user_emb_top=nearest_by_embedding(item_emb, user_emb),
    )
