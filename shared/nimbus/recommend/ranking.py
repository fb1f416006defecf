"""Candidates and ranking features for one user: the code training and serving share.

Numpy only (it runs on every request). A :class:`ItemTable` holds everything item-side
(aggregates, embeddings, co-occurrence neighbours, popular lists) and is loaded once per
feature version; a :class:`UserContext` is built per request from the user's batch
features and real-time state. ``candidates`` unions several generators; ``features``
builds the ranker's input for each candidate; the ranker itself is a linear model whose
arrays are extracted from the fitted scikit-learn pipeline (see ``bundle``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

EVENT_TYPES = ("view", "click", "purchase")
EVENT_WEIGHT = {"view": 1.0, "click": 3.0, "purchase": 5.0}  # how much an event says about taste
RECENT_N = 20  # items of history a user's context keeps (batch and real-time merged)
FEATURES = ("emb_dot", "cooc", "item_pop", "item_ctr", "item_buy_rate", "cat_share", "item_price")
N_EMB, N_COOC, N_CAT_POP, N_POP = 100, 100, 20, 40


@dataclass(eq=False)
class ItemTable:
    """Item-side features of one feature version."""

    version: str
    item_ids: np.ndarray  # str
    categories: np.ndarray  # str, index = category id
    item_category: np.ndarray  # int32 (n_items,)
    item_num: np.ndarray  # float32 (n_items, 4): pop, ctr, buy rate, log price
    item_emb: np.ndarray  # float32 (n_items, D)
    cooc_idx: np.ndarray  # int32 (n_items, M), -1 padded
    cooc_w: np.ndarray  # float32 (n_items, M)
    popular: np.ndarray  # int32, most popular first
    cat_popular: np.ndarray  # int32 (n_categories, P), -1 padded

    @cached_property
    def index(self) -> dict[str, int]:
        return {item: n for n, item in enumerate(self.item_ids.tolist())}

    @cached_property
    def category_index(self) -> dict[str, int]:
        return {cat: n for n, cat in enumerate(self.categories.tolist())}

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_categories(self) -> int:
        return len(self.categories)

    @property
    def dim(self) -> int:
        return self.item_emb.shape[1]

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        arrays = {k: getattr(self, k) for k in ("item_category", "item_num", "item_emb", "cooc_idx", "cooc_w",
                                                "popular", "cat_popular")}
        np.savez(buffer, version=np.asarray(self.version), item_ids=self.item_ids.astype(str),
                 categories=self.categories.astype(str), **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ItemTable:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        return cls(version=str(arrays.pop("version")), item_ids=arrays.pop("item_ids").astype(object),
                   categories=arrays.pop("categories").astype(object), **arrays)

    def popular_in(self, category: int | None, limit: int) -> np.ndarray:
        if category is None:
            return self.popular[:limit]
        row = self.cat_popular[category]
        return row[row >= 0][:limit]


@dataclass(eq=False)
class FeatureSet:
    """A whole feature version: the item table and every user's batch features."""

    items: ItemTable
    user_ids: np.ndarray  # str
    user_num: np.ndarray  # float32 (n_users, 3): log1p views, clicks, purchases
    user_cat: np.ndarray  # float32 (n_users, C): weighted counts per category
    user_emb: np.ndarray  # float32 (n_users, D)
    user_recent: np.ndarray  # int32 (n_users, RECENT_N), newest first, -1 padded
    user_emb_top: np.ndarray  # int32 (n_users, N_EMB): nearest items by embedding, best first

    @property
    def version(self) -> str:
        return self.items.version

    def user_blob(self, row: int) -> bytes:
        """One user's batch features as stored in Redis:
        float32 [num(3), cat(C), emb(D)] + int32 recent(RECENT_N) + int32 emb_top(N_EMB)."""
        floats = np.concatenate([self.user_num[row], self.user_cat[row], self.user_emb[row]]).astype(np.float32)
        ints = np.concatenate([self.user_recent[row], self.user_emb_top[row]]).astype(np.int32)
        return floats.tobytes() + ints.tobytes()


@dataclass(eq=False)
class UserContext:
    """What one request knows about a user."""

    known: bool  # has batch features (else: a cold-start user)
    emb: np.ndarray
    cat_counts: np.ndarray
    recent: np.ndarray  # item indices, newest first
    activity: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))
    # Nearest items by embedding, computed in the batch job: the user's embedding only
    # changes there, so the request path need not scan every item for it.
    emb_top: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))

    @property
    def cold(self) -> bool:
        return not self.known and len(self.recent) == 0


def decode_user(items: ItemTable, blob: bytes | None) -> tuple[np.ndarray, ...] | None:
    """(activity, category counts, embedding, recent items, embedding neighbours) from a user blob."""
    if not blob:
        return None
    n_float = 3 + items.n_categories + items.dim
    floats = np.frombuffer(blob, dtype=np.float32, count=n_float)
    ints = np.frombuffer(blob, dtype=np.int32, offset=4 * n_float)
    recent, emb_top = ints[:RECENT_N], ints[RECENT_N:]
    c = 3 + items.n_categories
    return floats[:3], floats[3:c], floats[c:], recent[recent >= 0], emb_top[emb_top >= 0]


def user_context(
    items: ItemTable,
    blob: bytes | None,
    rt_recent: list[bytes] | list[str] = (),  # type: ignore[assignment]
    rt_counts: list[bytes] | dict | None = None,
) -> UserContext:
    """Merge batch features (``blob``) with real-time state: recent items and the real-time
    hash (``c:{category}`` weighted counts), as a dict or Redis's flat field/value list."""
    decoded = decode_user(items, blob)
    if decoded is None:
        activity, cat_counts = np.zeros(3, np.float32), np.zeros(items.n_categories, np.float32)
        emb, batch_recent = np.zeros(items.dim, np.float32), np.empty(0, np.int32)
        emb_top = np.empty(0, np.int32)
    else:
        activity, cat_counts, emb, batch_recent, emb_top = decoded
        cat_counts = cat_counts.copy()
    if rt_counts:
        pairs = rt_counts.items() if isinstance(rt_counts, dict) else zip(rt_counts[::2], rt_counts[1::2])
        for key, value in pairs:
            name = key.decode() if isinstance(key, bytes) else key
            if name.startswith("c:") and (c := items.category_index.get(name[2:])) is not None:
                cat_counts[c] += float(value)
    if not rt_recent:  # the common case: the batch list is already unique, newest first
        return UserContext(decoded is not None, emb, cat_counts, batch_recent[:RECENT_N].astype(np.int32),
                           activity, emb_top)
    recent: list[int] = []
    index = items.index
    for item in rt_recent:
        n = index.get(item.decode() if isinstance(item, bytes) else item)
        if n is not None and n not in recent:
            recent.append(n)
    for n in batch_recent.tolist():
        if len(recent) >= RECENT_N:
            break
        if n not in recent:
            recent.append(n)
    return UserContext(decoded is not None, emb, cat_counts, np.asarray(recent[:RECENT_N], np.int32), activity,
                       emb_top)


def cooc_scores(items: ItemTable, recent: np.ndarray) -> np.ndarray:
    """Sum of co-occurrence weights from the user's recent items to every item (dense)."""
    scores = np.zeros(items.n_items, np.float32)
    if len(recent):
        idx = items.cooc_idx[recent].ravel()
        keep = idx >= 0
        np.add.at(scores, idx[keep], items.cooc_w[recent].ravel()[keep])
    return scores


def _top_positive(values: np.ndarray, n: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Indices of the (at most) ``n`` largest positive values, optionally within ``mask``."""
    nonzero = np.flatnonzero(values > 0 if mask is None else (values > 0) & mask)
    if len(nonzero) <= n:
        return nonzero
    return nonzero[np.argpartition(values[nonzero], -n)[-n:]]


def candidates(items: ItemTable, ctx: UserContext, cooc: np.ndarray, category: int | None = None) -> np.ndarray:
    """Union of: embedding neighbours, co-occurring items, popular in the user's favourite
    categories, and popular overall; the user's recent items are left out."""
    # A dense mark per item: cheaper than np.unique/np.isin for a few hundred candidates.
    chosen = np.zeros(items.n_items, dtype=bool)
    chosen[items.popular_in(category, N_POP)] = True
    emb_top = ctx.emb_top
    if category is not None and len(emb_top):
        emb_top = emb_top[items.item_category[emb_top] == category]
    chosen[emb_top] = True
    if len(ctx.recent):
        mask = None if category is None else items.item_category == category
        chosen[_top_positive(cooc, N_COOC, mask)] = True
    if category is None and ctx.cat_counts.any():
        for c in np.argpartition(-ctx.cat_counts, min(2, len(ctx.cat_counts) - 1))[:3]:
            chosen[items.popular_in(int(c), N_CAT_POP)] = True
    chosen[ctx.recent] = False
    return np.flatnonzero(chosen)


def features(items: ItemTable, ctx: UserContext, cand: np.ndarray, cooc: np.ndarray) -> np.ndarray:
    """The ranker's input for each candidate, columns in FEATURES order."""
    # One float32 matrix filled column by column (no column_stack and copy: this runs per request).
    x = np.empty((len(cand), len(FEATURES)), np.float32)
    total = float(ctx.cat_counts.sum())
    if total > 0:
        np.divide(ctx.cat_counts[items.item_category[cand]], total, out=x[:, 5])
    else:
        x[:, 5] = 0
    if ctx.known:
        np.matmul(items.item_emb[cand], ctx.emb, out=x[:, 0])
    else:
        x[:, 0] = 0
    x[:, 1] = cooc[cand]
    num = items.item_num[cand]
    x[:, 2:5] = num[:, :3]
    x[:, 6] = num[:, 3]
    return x


def nearest_by_embedding(item_emb: np.ndarray, user_emb: np.ndarray, n: int = N_EMB) -> np.ndarray:
    """For each user (row of ``user_emb``), the ``n`` items with the largest dot product, best first."""
    n = min(n, item_emb.shape[0])
    out = np.empty((user_emb.shape[0], n), np.int32)
    for start in range(0, user_emb.shape[0], 1024):  # bounded memory: users x items per block
        scores = user_emb[start:start + 1024] @ item_emb.T
        top = np.argpartition(-scores, n - 1, axis=1)[:, :n]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        out[start:start + 1024] = np.take_along_axis(top, order, axis=1)
    return out


def score_inputs(items: ItemTable, ctx: UserContext, category: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(candidate indices, feature matrix) for one user."""
    cooc = cooc_scores(items, ctx.recent)
    cand = candidates(items, ctx, cooc, category)
    return cand, features(items, ctx, cand, cooc)
