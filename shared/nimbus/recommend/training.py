"""Train the ranker on a time split and measure it against a popularity baseline.

The log is cut twice: features from events before ``t1`` with labels (clicks and
purchases) in ``[t1, t2)`` train the ranker; features from events before ``t2`` with
labels after ``t2`` test the whole recommender — candidates plus ranking — against
"most popular items the user has not just seen". Metrics: recall@k and NDCG@k.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from nimbus.recommend.bundle import ModelBundle
from nimbus.recommend.data import Dataset
from nimbus.recommend.featurize import compute_features
from nimbus.recommend.ranking import FEATURES, FeatureSet, UserContext, decode_user, score_inputs

Progress = Callable[[str], None]


@dataclass
class TrainResult:
    pipeline: Pipeline
    bundle: ModelBundle
    metrics: dict[str, float]
    params: dict[str, object]
    examples: tuple[np.ndarray, np.ndarray] = field(repr=False, default=(np.empty(0), np.empty(0)))
    reference: dict = field(repr=False, default_factory=dict)  # drift reference (monitoring.drift)


def time_cuts(logs: pd.DataFrame, train_end: float = 0.7, test_start: float = 0.85) -> tuple[pd.Timestamp, pd.Timestamp]:
    stamps = logs["timestamp"]
    return stamps.quantile(train_end), stamps.quantile(test_start)


def relevant_items(fs: FeatureSet, logs: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp | None) -> dict[int, set[int]]:
    """For each user known to ``fs``: items clicked or bought in [start, end) that ``fs`` knows."""
    window = logs[(logs["timestamp"] >= start) & (logs["event"].isin(["click", "purchase"]))]
    if end is not None:
        window = window[window["timestamp"] < end]
    users = pd.Index(fs.user_ids).get_indexer(window["user_id"])
    items = pd.Index(fs.items.item_ids).get_indexer(window["item_id"])
    keep = (users >= 0) & (items >= 0)
    relevant: dict[int, set[int]] = {}
    for user, item in zip(users[keep].tolist(), items[keep].tolist()):
        relevant.setdefault(user, set()).add(item)
    return relevant


def context_for(fs: FeatureSet, row: int) -> UserContext:
    activity, cat, emb, recent, emb_top = decode_user(fs.items, fs.user_blob(row))  # type: ignore[misc]
    return UserContext(True, emb, cat.copy(), recent, activity, emb_top)


def build_examples(fs: FeatureSet, relevant: dict[int, set[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Candidates of every user with positives, labelled 1 when later clicked or bought."""
    xs, ys = [], []
    for row, items in relevant.items():
        ctx = context_for(fs, row)
        cand, x = score_inputs(fs.items, ctx)
        y = np.isin(cand, list(items - set(ctx.recent.tolist())))
        if y.any():
            xs.append(x)
            ys.append(y)
    if not xs:
        raise ValueError("no training examples: no user has a later click or purchase among the candidates")
    return np.concatenate(xs), np.concatenate(ys).astype(np.int8)


def _ranking_metrics(top: np.ndarray, relevant: set[int], k: int) -> tuple[float, float]:
    hits = np.fromiter((item in relevant for item in top[:k]), dtype=bool, count=min(k, len(top)))
    recall = hits.sum() / len(relevant)
    gains = hits / np.log2(np.arange(2, len(hits) + 2))
    ideal = (1.0 / np.log2(np.arange(2, min(k, len(relevant)) + 2))).sum()
    return float(recall), float(gains.sum() / ideal)


def evaluate(fs: FeatureSet, bundle: ModelBundle, relevant: dict[int, set[int]], k: int = 10) -> dict[str, float]:
    """recall@k and NDCG@k of the recommender and of the popularity baseline, averaged over users."""
    model, baseline = [], []
    for row, items in relevant.items():
        ctx = context_for(fs, row)
        target = items - set(ctx.recent.tolist())
        if not target:
            continue
        cand, x = score_inputs(fs.items, ctx)
        order = cand[np.argsort(-bundle.decision(x), kind="stable")]
        popular = fs.items.popular[~np.isin(fs.items.popular, ctx.recent)]
        model.append(_ranking_metrics(order, target, k))
        baseline.append(_ranking_metrics(popular, target, k))
    if not model:
        raise ValueError("no test users: the test window holds no clicks or purchases by known users")
    m, b = np.asarray(model), np.asarray(baseline)
    return {
        f"recall_at_{k}": float(m[:, 0].mean()),
        f"ndcg_at_{k}": float(m[:, 1].mean()),
        f"popular_recall_at_{k}": float(b[:, 0].mean()),
        f"popular_ndcg_at_{k}": float(b[:, 1].mean()),
        "test_users": float(len(m)),
    }


def drift_reference(fs: FeatureSet, bundle: ModelBundle, max_users: int = 2000, seed: int = 0) -> dict:
    """What serving samples for drift monitoring — the top-ranked item's features, category and
    score — for up to ``max_users`` users of ``fs``, as the reference of ``monitoring.drift``.

    The sampler keeps the first item of each answer, so the reference is built the same way:
    all candidates would be a different (and always "drifted") population.
    """
    from nimbus.monitoring.drift import build_reference

    rows = np.random.default_rng(seed).permutation(len(fs.user_ids))[:max_users]
    xs, scores, cats = [], [], []
    for row in rows:
        cand, x = score_inputs(fs.items, context_for(fs, int(row)))
        if len(cand):
            best = int(np.argmax(bundle.decision(x)))
            xs.append(x[best])
            scores.append(float(bundle.probability(x[best:best + 1])[0]))
            cats.append(str(fs.items.categories[fs.items.item_category[cand[best]]]))
    matrix = np.asarray(xs, dtype=np.float64).reshape(-1, len(FEATURES))
    return build_reference({name: matrix[:, i] for i, name in enumerate(FEATURES)}, {"category": cats},
                           np.asarray(scores))


def train(dataset: Dataset, k: int = 10, progress: Progress | None = None) -> TrainResult:
    """Fit the ranker on the first cut and evaluate the recommender on the second."""
    say = progress or (lambda _msg: None)
    logs = dataset.interactions
    t1, t2 = time_cuts(logs)
    say(f"features before {t1:%Y-%m-%d %H:%M} (training)")
    fs_train = compute_features(dataset, until=t1)
    x, y = build_examples(fs_train, relevant_items(fs_train, logs, t1, t2))
    say(f"fitting the ranker on {len(y):,} candidates ({int(y.sum()):,} positive)")
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=500))
    pipeline.fit(pd.DataFrame(x, columns=list(FEATURES)), y)

    say(f"features before {t2:%Y-%m-%d %H:%M} (test)")
    fs_test = compute_features(dataset, until=t2)
    popular = [str(fs_test.items.item_ids[i]) for i in fs_test.items.popular[:100]]
    bundle = ModelBundle.from_pipeline(pipeline, popular, {})
    say("evaluating against the popularity baseline")
    metrics = evaluate(fs_test, bundle, relevant_items(fs_test, logs, t2, None), k)
    metrics["train_positive_rate"] = float(y.mean())
    params = {
        "features": ",".join(FEATURES), "events": len(logs), "users": int(logs["user_id"].nunique()),
        "items": int(logs["item_id"].nunique()), "train_cut": str(t1), "test_cut": str(t2),
        "examples": len(y), "model": "StandardScaler+LogisticRegression(C=1.0)",
    }
    bundle.meta = {"metrics": metrics, "params": {k: str(v) for k, v in params.items()}}
    # The reference is what this model serves on the features of the whole log — those the
    # features function publishes from it — so a later check measures change since go-live.
    say("recording the served-feature reference for drift monitoring")
    reference = drift_reference(compute_features(dataset), bundle)
    return TrainResult(pipeline, bundle, metrics, params, (x, y), reference)
