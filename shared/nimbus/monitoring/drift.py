"""Drift: do the features and scores a model serves still look like those it was trained on?

**Reference** (:func:`build_reference`, saved at training time as the MLflow artifact
``reference/drift.json`` of the model version's run): per numeric feature and for the
score, quantile bin edges (deciles, ties merged), the share of rows in each bin and a
bounded raw sample (for the KS test); per categorical feature, the count of each value.

**Live** values are the rows the serving paths sample into Redis (the recommender's
``FeatureSampler`` and ``predict``'s ``PredictionSampler``, through
:class:`nimbus.monitoring.samples.SampleBuffer`: ``mon:samples:{model}``, and the model named in
the set ``mon:sampled``; each row carries the model version, the numeric features, the
categorical ones and the score — for a registry model, :func:`nimbus.serving.samples.score_of`).

**Statistics** per feature: PSI over the reference bins, and a two-sample test —
Kolmogorov-Smirnov for numeric features and the score (``scipy.stats.ks_2samp``),
chi-square homogeneity of the reference and live counts for categorical ones
(``scipy.stats.chi2_contingency``). A feature **drifts** when its PSI passes
``drift_psi_threshold`` (0.1) *and* its test is significant (p < ``drift_p_value``,
0.05): PSI says how far the distribution moved, the test says the move is not sampling
noise. Either alone misleads — PSI is noisy on a few hundred samples, and a test on
thousands flags shifts too small to matter. No verdict under ``drift_min_samples``.

**The check** (:func:`run_check` of one model, :func:`run_checks` of the recommender and every
sampled model: the ``monitor`` function on a schedule, and ``nimbus monitor drift``) writes one
document per served model version to MongoDB (``drift_checks``) and an alert (``drift_alerts``)
when anything drifted.

Contract (the dashboard reads it)::

    history(settings, model="nimbus-recommender", limit=50) -> [  # newest first
        {"id", "checked_at" (ISO 8601), "model", "model_version", "aliases", "status"
         ("ok" | "insufficient_samples" | "no_reference"), "samples",
         "features": [{"name", "kind" ("numeric" | "categorical"), "psi", "ks_p", "chi2_p", "drifted"}],
         "score": {"psi", "ks_p", "drifted"}, "drifted", "thresholds"}]
    alerts(settings, limit=50) -> [  # newest first
        {"id", "raised_at" (ISO 8601), "model", "model_version", "check_id", "features" (names),
         "score_drifted", "message"}]
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from nimbus.config import Settings

REFERENCE_PATH = "reference/drift.json"  # artifact of the run that registered the model version
SCORE = "score"
_SAMPLE = 2000  # raw reference values kept per numeric feature for the KS test


# ---- statistics --------------------------------------------------------------------------------
def psi(expected: Sequence[float], actual: Sequence[float], eps: float = 1e-4) -> float:
    """Population stability index between two histograms (counts or shares) over the same bins:
    ``sum((a - e) * ln(a / e))`` over bins, with shares floored at ``eps`` so an empty bin counts."""
    e_total, a_total = sum(expected) or 1.0, sum(actual) or 1.0
    value = 0.0
    for e, a in zip(expected, actual):
        pe, pa = max(e / e_total, eps), max(a / a_total, eps)
        value += (pa - pe) * math.log(pa / pe)
    return value


def bin_counts(edges: Sequence[float], values: np.ndarray) -> list[int]:
    """Counts of ``values`` in the bins ``(-inf, e0), [e0, e1), ..., [e_last, inf)``."""
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")
    return np.bincount(idx, minlength=len(edges) + 1).tolist()


def numeric_reference(values: np.ndarray, bins: int = 10, sample: int = _SAMPLE, seed: int = 0) -> dict[str, Any]:
    """Quantile bin edges, the share of ``values`` in each bin, and a bounded raw sample."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    edges = np.unique(np.quantile(values, np.arange(1, bins) / bins)).tolist() if len(values) else []
    counts = bin_counts(edges, values)
    keep = np.random.default_rng(seed).permutation(len(values))[:sample]
    return {"edges": edges, "proportions": [c / max(1, len(values)) for c in counts],
            "sample": values[keep].tolist(), "n": len(values)}


def categorical_reference(values: Sequence[str]) -> dict[str, Any]:
    counts = Counter(str(v) for v in values)
    return {"counts": dict(counts.most_common()), "n": sum(counts.values())}


def build_reference(numeric: Mapping[str, np.ndarray], categorical: Mapping[str, Sequence[str]],
                    score: np.ndarray) -> dict[str, Any]:
    """The JSON-able reference of one model version (see the module docstring)."""
    return {"format": 1, "numeric": {name: numeric_reference(v) for name, v in numeric.items()},
            "categorical": {name: categorical_reference(v) for name, v in categorical.items()},
            "score": numeric_reference(score)}


def numeric_drift(ref: Mapping[str, Any], live: np.ndarray) -> dict[str, float | None]:
    """PSI over the reference bins and the two-sample KS p-value of ``live`` vs the reference sample."""
    from scipy.stats import ks_2samp

    live = np.asarray(live, dtype=np.float64)
    live = live[np.isfinite(live)]
    if not len(live) or not ref["sample"]:
        return {"psi": None, "ks_p": None}
    return {"psi": psi(ref["proportions"], bin_counts(ref["edges"], live)),
            "ks_p": float(ks_2samp(ref["sample"], live).pvalue)}


def categorical_drift(ref: Mapping[str, Any], live: Sequence[str]) -> dict[str, float | None]:
    """PSI over the categories and the chi-square p-value of reference vs live counts (2 x K table)."""
    from scipy.stats import chi2_contingency

    live_counts = Counter(str(v) for v in live)
    names = sorted(set(ref["counts"]) | set(live_counts))
    expected = [ref["counts"].get(n, 0) for n in names]
    actual = [live_counts.get(n, 0) for n in names]
    if not live_counts or len(names) < 2:
        return {"psi": None if not live_counts else psi(expected, actual), "chi2_p": None}
    return {"psi": psi(expected, actual), "chi2_p": float(chi2_contingency([expected, actual]).pvalue)}


# ---- the check ---------------------------------------------------------------------------------
def model_artifact_json(settings: Settings, name: str, version: str, path: str) -> dict[str, Any] | None:
    """A JSON artifact of the run that registered ``name`` version ``version``; None if absent."""
    from nimbus.stores.registry import Registry

    return Registry.for_settings(settings).version_json(name, version, path)


_references: dict[tuple[str, str, str], dict[str, Any] | None] = {}


def load_reference(settings: Settings, model: str, version: str) -> dict[str, Any] | None:
    """The drift reference of a model version (cached per process: a version never changes)."""
    key = (settings.registry_uri, model, version)
    if _references.get(key) is None:
        _references[key] = model_artifact_json(settings, model, version, REFERENCE_PATH)
    return _references[key]


def compare(reference: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], settings: Settings) -> dict[str, Any]:
    """Per-feature and score drift of live ``rows`` (sampler rows) against ``reference``."""
    psi_max, p_max = settings.drift_psi_threshold, settings.drift_p_value

    def verdict(stats: Mapping[str, float | None], p_key: str) -> bool:
        p, value = stats.get(p_key), stats.get("psi")
        return value is not None and p is not None and value > psi_max and p < p_max

    features = []
    for name, ref in reference["numeric"].items():
        live = np.array([r["features"].get(name, np.nan) for r in rows], dtype=np.float64)
        stats = numeric_drift(ref, live)
        features.append({"name": name, "kind": "numeric", **stats, "chi2_p": None,
                         "drifted": verdict(stats, "ks_p")})
    for name, ref in reference["categorical"].items():
        stats = categorical_drift(ref, [r["categorical"][name] for r in rows if name in r.get("categorical", {})])
        features.append({"name": name, "kind": "categorical", "psi": stats["psi"], "ks_p": None,
                         "chi2_p": stats["chi2_p"], "drifted": verdict(stats, "chi2_p")})
    score_stats = numeric_drift(reference["score"], np.array([r.get(SCORE, np.nan) for r in rows], dtype=np.float64))
    score = {**score_stats, "drifted": verdict(score_stats, "ks_p")}
    return {"features": features, "score": score,
            "drifted": score["drifted"] or any(f["drifted"] for f in features)}


def live_rows(settings: Settings, model: str) -> list[dict[str, Any]]:
    """The sampled served rows of ``model`` in Redis, newest first."""
    import orjson

    from nimbus.stores.redis.live import LiveModelStore

    return [orjson.loads(raw) for raw in LiveModelStore.for_settings(settings).samples(model)]


def check_version(settings: Settings, model: str, version: str, rows: Sequence[Mapping[str, Any]],
                  reference: Mapping[str, Any] | None) -> dict[str, Any]:
    """One drift check document (not yet stored)."""
    doc: dict[str, Any] = {
        "checked_at": datetime.now(UTC), "model": model, "model_version": str(version), "samples": len(rows),
        "features": [], "score": {"psi": None, "ks_p": None, "drifted": False}, "drifted": False,
        "thresholds": {"psi": settings.drift_psi_threshold, "p_value": settings.drift_p_value,
                       "min_samples": settings.drift_min_samples},
    }
    if rows:
        stamps = [r["ts"] for r in rows if "ts" in r]
        doc["window"] = {"from": min(stamps), "to": max(stamps)} if stamps else None
    if reference is None:
        return {**doc, "status": "no_reference"}
    if len(rows) < settings.drift_min_samples:
        return {**doc, "status": "insufficient_samples"}
    return {**doc, **compare(reference, rows, settings), "status": "ok"}


def run_check(settings: Settings, model: str) -> list[dict[str, Any]]:
    """Check the versions of ``model`` now served; store the results and raise an alert for each
    that drifted. Returns the stored documents (JSON-able).

    Which versions: those with a live pointer in Redis (the recommender's live projection, each
    checked, with its aliases, even before it has samples); for a model without one (any registry
    model ``predict`` serves), each version with sampled rows, its aliases named from the registry."""
    from nimbus.stores.documents import Collections, DocumentStore
    from nimbus.stores.redis.live import LiveModelStore

    rows = live_rows(settings, model)
    aliases: dict[str, list[str]] = {}
    live = LiveModelStore.for_settings(settings).live(model)
    for alias, version in (live or registry_aliases(settings, model)).items():
        aliases.setdefault(version, []).append(alias)
    versions = set(aliases) if live else {str(r["model_version"]) for r in rows if r.get("model_version") is not None}
    documents = DocumentStore.for_settings(settings)
    results = []
    for version in sorted(versions, key=_version_order):
        mine = [r for r in rows if str(r.get("model_version")) == version]
        doc = {**check_version(settings, model, version, mine, load_reference(settings, model, version)),
               "aliases": sorted(aliases.get(version, []))}
        doc["_id"] = documents.collection(Collections.DRIFT_CHECKS).insert_one(doc).inserted_id
        if doc["drifted"]:
            documents.collection(Collections.DRIFT_ALERTS).insert_one(alert_for(doc))
        results.append(_public(doc))
    return results


def run_checks(settings: Settings, models: Sequence[str] = ()) -> list[dict[str, Any]]:
    """:func:`run_check` of ``models`` and of every model whose served rows were sampled (``predict``'s
    and the recommender's), each once, in name order."""
    from nimbus.stores.redis.live import LiveModelStore

    names = sorted(set(models) | set(LiveModelStore.for_settings(settings).sampled_models()))
    return [doc for name in names for doc in run_check(settings, name)]


def registry_aliases(settings: Settings, model: str) -> dict[str, str]:
    """alias -> version of ``model`` in the registry (none when the model is not registered)."""
    from nimbus.errors import NotFound
    from nimbus.stores.registry import Registry

    try:
        return Registry.for_settings(settings).aliases(model)
    except NotFound:
        return {}


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def alert_for(check: Mapping[str, Any]) -> dict[str, Any]:
    names = [f["name"] for f in check["features"] if f["drifted"]]
    what = ", ".join(names + (["the score"] if check["score"]["drifted"] else []))
    return {"raised_at": check["checked_at"], "model": check["model"], "model_version": check["model_version"],
            "check_id": check["_id"], "features": names, "score_drifted": check["score"]["drifted"],
            "message": f"{check['model']} v{check['model_version']}: drift in {what} "
                       f"({check['samples']} samples; PSI > {check['thresholds']['psi']} and p < "
                       f"{check['thresholds']['p_value']})"}


def _public(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A stored document as JSON-able data: ``_id`` -> ``id`` (str), datetimes -> ISO 8601."""
    out = {k: v for k, v in doc.items() if k != "_id"}
    out["id"] = str(doc.get("_id"))
    for key in ("checked_at", "raised_at"):
        if isinstance(out.get(key), datetime):
            out[key] = out[key].isoformat()
    if "check_id" in out:
        out["check_id"] = str(out["check_id"])
    return out


def history(settings: Settings, model: str, limit: int = 50) -> list[dict[str, Any]]:
    """The latest drift checks of ``model``, newest first (see the module docstring)."""
    from nimbus.stores.documents import Collections, DocumentStore

    cursor = DocumentStore.for_settings(settings).collection(Collections.DRIFT_CHECKS).find(
        {"model": model}).sort("checked_at", -1).limit(limit)
    return [_public(doc) for doc in cursor]


def alerts(settings: Settings, limit: int = 50) -> list[dict[str, Any]]:
    """The latest drift alerts of every model, newest first."""
    from nimbus.stores.documents import Collections, DocumentStore

    cursor = DocumentStore.for_settings(settings).collection(Collections.DRIFT_ALERTS).find().sort(
        "raised_at", -1).limit(limit)
    return [_public(doc) for doc in cursor]
