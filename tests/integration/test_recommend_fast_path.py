"""The served answers (Redis read, the request path's numpy, argpartition top-k) are the reference
scoring's: ranking.py on the feature set as computed, the fitted scikit-learn pipeline's
probabilities, a full stable sort — on every user, with and without real-time events and a category."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nimbus.api.recommend import RecommendService
from nimbus.recommend.ranking import FEATURES, RECENT_N, ItemTable, score_inputs, user_context
from nimbus.stores.redis.features import FeatureStore, RealtimeEvent


def reference(items: ItemTable, pipeline, blob: bytes | None, recent: list[str], counts: dict, k: int,
              category: str | None) -> tuple[list[str], np.ndarray]:
    ctx = user_context(items, blob, recent, counts)
    cand, x = score_inputs(items, ctx, None if category is None else items.category_index[category])
    p = pipeline.predict_proba(pd.DataFrame(x.astype(np.float64), columns=list(FEATURES)))[:, 1]
    order = np.argsort(-p, kind="stable")[:k]
    return [str(items.item_ids[c]) for c in cand[order]], p[order]


@pytest.fixture
def served(live_recommender: dict) -> RecommendService:
    service = RecommendService(live_recommender["settings"])
    yield service
    service.close()


def test_every_user_gets_the_reference_ranking(live_recommender: dict, served: RecommendService) -> None:
    features, pipeline = live_recommender["features"], live_recommender["result"].pipeline
    settings = live_recommender["settings"]
    store = FeatureStore.for_settings(settings)
    users = [str(u) for u in features.user_ids]
    # a third of the users also have fresh events: recent items and category counts merged at request time
    items_table = features.items
    rng = np.random.default_rng(7)
    events = [RealtimeEvent(f"e{n}", user, str(items_table.item_ids[i]),
                            str(items_table.categories[items_table.item_category[i]]), float(rng.integers(1, 6)),
                            1_700_000_000 + n)
              for n, (user, i) in enumerate((u, int(rng.integers(items_table.n_items))) for u in users[::3])]
    store.apply_events(events, RECENT_N)
    recommender = served.recommender
    live_items = recommender.live.state.items
    category = str(items_table.categories[0])
    compared = 0
    for row, user in enumerate(users):
        counts, recent = store.realtime(user, RECENT_N)
        for k, cat in ((10, None), (25, None), (5, category)):
            answer = recommender.recommend(user, k, cat)
            assert answer.strategy == "personalized" and not answer.degraded
            ids, probs = reference(live_items, pipeline, features.user_blob(row), recent, counts, k, cat)
            assert answer.items == ids, f"{user} k={k} category={cat}"
            np.testing.assert_allclose(answer.scores, probs, rtol=1e-4, atol=1e-6)
            compared += 1
    assert compared == 3 * len(users) and len(users) >= 500


def test_reads_batched_in_one_loop_turn_answer_as_one_by_one(live_recommender: dict, served: RecommendService) -> None:
    import asyncio

    from nimbus.stores.redis.keys import Keys

    settings = live_recommender["settings"]
    users = [str(u) for u in live_recommender["features"].user_ids[:120]]
    bad = users[7]
    FeatureStore.for_settings(settings).client.set(Keys.rt_user(bad), "not a hash")  # WRONGTYPE for this user only
    recommender = served.recommender
    one_by_one = {user: recommender.recommend(user, 10) for user in users}

    async def together() -> list:
        return await asyncio.gather(*(recommender.recommend_batched(user, 10) for user in users))

    before = (recommender.batcher.batches, recommender.batcher.reads)
    batched = asyncio.run(together())
    assert recommender.batcher.reads - before[1] == len(users)
    assert recommender.batcher.batches - before[0] == 1  # every read of that turn in one round trip
    for user, answer in zip(users, batched):
        alone = one_by_one[user]
        assert (answer.items, answer.strategy, answer.degraded) == (alone.items, alone.strategy, alone.degraded)
        np.testing.assert_allclose(answer.scores, alone.scores, rtol=1e-6)
    assert one_by_one[bad].strategy == "fallback" and batched[7].strategy == "fallback"
    assert {a.strategy for i, a in enumerate(batched) if i != 7} == {"personalized"}
    assert recommender.breaker.allow()  # bad data under one user's keys is not an outage
