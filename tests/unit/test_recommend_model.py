"""Candidates, features, the ranker and its serving form, on a small synthetic log."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nimbus.recommend.bundle import ModelBundle
from nimbus.recommend.data import generate
from nimbus.recommend.featurize import compute_features
from nimbus.recommend.ranking import FEATURES, RECENT_N, ItemTable, score_inputs, user_context
from nimbus.recommend.training import train


@pytest.fixture(scope="module")
def data():
    return generate(n_users=800, n_items=400, n_categories=12, days=40, seed=5)


@pytest.fixture(scope="module")
def features(data):
    return compute_features(data)


@pytest.fixture(scope="module")
def trained(data):
    return train(data)


def test_the_recommender_beats_popularity_on_a_time_split_holdout(trained) -> None:
    m = trained.metrics
    assert m["test_users"] > 50
    assert m["recall_at_10"] > 1.5 * m["popular_recall_at_10"]
    assert m["ndcg_at_10"] > 1.5 * m["popular_ndcg_at_10"]


def test_the_serving_bundle_scores_exactly_like_the_scikit_learn_pipeline(trained) -> None:
    x = trained.examples[0][:500]
    expected = trained.pipeline.predict_proba(pd.DataFrame(x, columns=list(FEATURES)))[:, 1]
    np.testing.assert_allclose(trained.bundle.probability(x), expected, rtol=1e-4, atol=1e-6)
    again = ModelBundle.from_bytes(trained.bundle.to_bytes())
    np.testing.assert_allclose(again.probability(x), expected, rtol=1e-4, atol=1e-6)


def test_a_bundle_built_for_other_features_is_refused(trained) -> None:
    odd = ModelBundle(np.ones(3, np.float32), 0.0, ("a", "b", "c"))
    with pytest.raises(ValueError, match="expects features"):
        ModelBundle.from_bytes(odd.to_bytes())


def test_the_item_table_survives_its_redis_encoding(features) -> None:
    again = ItemTable.from_bytes(features.items.to_bytes())
    assert again.version == features.items.version
    assert again.item_ids.tolist() == features.items.item_ids.tolist()
    np.testing.assert_array_equal(again.cooc_idx, features.items.cooc_idx)


def test_candidates_leave_out_recent_items_and_respect_a_category(features) -> None:
    items = features.items
    ctx = user_context(items, features.user_blob(0))
    assert len(ctx.recent) > 0
    cand, x = score_inputs(items, ctx)
    assert x.shape == (len(cand), len(FEATURES))
    assert not np.isin(cand, ctx.recent).any()
    cat = int(items.item_category[cand[0]])
    only, _ = score_inputs(items, ctx, cat)
    assert len(only) > 0 and (items.item_category[only] == cat).all()


def test_real_time_state_comes_first_and_shifts_category_counts(features) -> None:
    items = features.items
    batch = user_context(items, features.user_blob(0))
    newest = str(items.item_ids[items.popular[-1]])
    category = str(items.categories[items.item_category[items.popular[-1]]])
    ctx = user_context(items, features.user_blob(0), [newest.encode()], [f"c:{category}".encode(), b"50"])
    assert ctx.recent[0] == items.index[newest] and len(ctx.recent) <= RECENT_N
    c = items.category_index[category]
    assert ctx.cat_counts[c] == pytest.approx(batch.cat_counts[c] + 50)


def test_a_user_without_history_is_cold(features) -> None:
    ctx = user_context(features.items, None)
    assert ctx.cold and not ctx.known
