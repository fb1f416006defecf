"""Recommendation performance: CTR and conversion per model version and variant over
time, and the coverage and diversity of what was served.

Every answer the recommender serves is counted by the exposure tracker
(:mod:`nimbus.experiments.exposures`) in Redis time buckets of ``perf_bucket_s`` seconds
(default 60): exposures per ``model_version|variant``, the first click and first purchase
attributed to each answer (counted in the bucket of the *answer*, so a bucket's CTR is
clicks on the answers it served), a HyperLogLog of served item ids, and the sum of each
list's intra-list diversity. ``rollup`` copies the recent buckets' counters into MongoDB
(the ``experiments`` function runs it every minute); ``summary`` reads Redis and fills
buckets Redis no longer holds from MongoDB.

Contract (used by the dashboard; every value JSON-able)::

    summary(settings, window_s=3600, bucket_s=60) -> {
      window_s, bucket_s,
      by_version: [{model_version, variant, exposures, clicks, purchases, ctr, conversion}],
      series: [{t, model_version, variant, exposures, clicks, ctr}],   # t: bucket start, epoch s
      coverage,          # distinct items served in the window / items in the current catalogue
      distinct_items, catalogue_items,
      diversity,         # mean over answers of the share of item pairs from different categories
      lists}             # answers with 2+ items behind ``diversity``

``variant`` is ``"-"`` for answers served outside any experiment, ``model_version``
``"none"`` when no model answered. ``ctr`` and ``conversion`` are per answer (exposure).
Coverage needs the Redis item sketches, kept ``perf_keep_s`` (2 days by default).
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from nimbus.config import Settings
from nimbus.errors import InvalidInput
from nimbus.monitoring.windows import check_window
from nimbus.stores.documents import Collections, DocumentStore
from nimbus.stores.redis.experiments import ExperimentStore
from nimbus.stores.redis.features import FeatureStore
from nimbus.stores.redis.keys import DIV_SUM, LISTS, METRICS, parse_perf_field


def _buckets(settings: Settings, window_s: int, now: float | None = None) -> list[int]:
    base = settings.perf_bucket_s
    now = time.time() if now is None else now
    last = int(now // base * base)
    first = int((now - window_s) // base * base) + base
    return list(range(first, last + base, base))


def rollup(settings: Settings, lookback_s: int = 3 * 3600) -> int:
    """Copy the counters of the recent buckets from Redis into MongoDB (upsert by bucket)."""
    buckets = _buckets(settings, lookback_s)
    counters = ExperimentStore.for_settings(settings).perf_buckets(buckets)
    collection = DocumentStore.for_settings(settings).collection(Collections.RECOMMEND_PERFORMANCE)
    written = 0
    for bucket, counts in zip(buckets, counters):
        if counts:
            collection.replace_one({"_id": bucket}, {"bucket": bucket, "bucket_s": settings.perf_bucket_s,
                                                     "at": datetime.fromtimestamp(bucket, UTC), "counts": counts},
                                   upsert=True)
            written += 1
    return written


def _rate(x: float, n: float) -> float:
    return x / n if n else 0.0


def summary(settings: Settings, window_s: int = 3600, bucket_s: int = 60) -> dict[str, Any]:
    """Performance over the last ``window_s`` seconds, series in ``bucket_s`` steps (see the module docstring)."""
    base = settings.perf_bucket_s
    if window_s <= 0 or bucket_s <= 0 or bucket_s % base:
        raise InvalidInput(f"bucket_s must be a positive multiple of {base} (NIMBUS_PERF_BUCKET_S) and "
                           f"window_s positive; got bucket_s={bucket_s}, window_s={window_s}")
    check_window("window_s", window_s, bucket_s, base)
    buckets = _buckets(settings, window_s)
    counters = ExperimentStore.for_settings(settings).perf_buckets(buckets)
    missing = [b for b, c in zip(buckets, counters) if not c]
    if missing:
        stored = DocumentStore.for_settings(settings).collection(Collections.RECOMMEND_PERFORMANCE).find(
            {"_id": {"$in": missing}})
        older = {d["_id"]: d["counts"] for d in stored}
        counters = [c or older.get(b, {}) for b, c in zip(buckets, counters)]

    totals: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: dict.fromkeys(METRICS, 0.0))
    series: dict[tuple[int, str, str], dict[str, float]] = defaultdict(lambda: dict.fromkeys(METRICS, 0.0))
    div_sum = lists = 0.0
    for bucket, counts in zip(buckets, counters):
        t = bucket // bucket_s * bucket_s
        for field, value in counts.items():
            if field == DIV_SUM:
                div_sum += value
            elif field == LISTS:
                lists += value
            elif (parsed := parse_perf_field(field)) is not None:
                version, variant, metric = parsed
                totals[(version, variant)][metric] += value
                series[(t, version, variant)][metric] += value

    features, meta = FeatureStore.for_settings(settings), None
    if (version := features.current_feature_version()) is not None:
        meta = features.feature_meta(version)
    catalogue = int(meta.get("items", 0)) if meta else 0
    distinct = ExperimentStore.for_settings(settings).distinct_items(buckets)
    return {
        "window_s": window_s, "bucket_s": bucket_s,
        "by_version": [{"model_version": v, "variant": var, "exposures": int(c["exposures"]),
                        "clicks": int(c["clicks"]), "purchases": int(c["purchases"]),
                        "ctr": _rate(c["clicks"], c["exposures"]), "conversion": _rate(c["purchases"], c["exposures"])}
                       for (v, var), c in sorted(totals.items())],
        "series": [{"t": t, "model_version": v, "variant": var, "exposures": int(c["exposures"]),
                    "clicks": int(c["clicks"]), "ctr": _rate(c["clicks"], c["exposures"])}
                   for (t, v, var), c in sorted(series.items())],
        "coverage": min(1.0, _rate(distinct, catalogue)), "distinct_items": distinct, "catalogue_items": catalogue,
        "diversity": _rate(div_sum, lists), "lists": int(lists),
    }
