"""Drift statistics and latency percentiles: checked against their formulas, scipy and numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from nimbus.config import Settings
from nimbus.monitoring.drift import (
    bin_counts,
    build_reference,
    categorical_drift,
    categorical_reference,
    compare,
    numeric_drift,
    numeric_reference,
    psi,
)
from nimbus.monitoring.traffic import LATENCY_BUCKETS_MS, percentile


def test_psi_matches_its_formula_on_a_hand_computed_case() -> None:
    # expected 25/25/50 %, actual 50/25/25 %:
    # (0.50 - 0.25) ln(0.50 / 0.25) + 0 + (0.25 - 0.50) ln(0.25 / 0.50) = 0.5 ln 2
    assert psi([25, 25, 50], [0.5, 0.25, 0.25]) == pytest.approx(0.5 * math.log(2), rel=1e-12)
    assert psi([1, 2, 3], [2, 4, 6]) == 0.0  # counts and shares are the same histogram


def test_psi_counts_an_empty_bin_at_the_floor_share() -> None:
    eps = 1e-4
    expected = (1 - 0.5) * math.log(1 / 0.5) + (eps - 0.5) * math.log(eps / 0.5)
    assert psi([1, 1], [1, 0]) == pytest.approx(expected, rel=1e-12)


def test_reference_bins_are_deciles_and_bin_counts_match_numpy() -> None:
    values = np.random.default_rng(0).normal(size=20_000)
    ref = numeric_reference(values)
    assert len(ref["edges"]) == 9 and ref["n"] == 20_000 and len(ref["sample"]) == 2000
    assert ref["proportions"] == pytest.approx([0.1] * 10, abs=1e-3)
    live = np.random.default_rng(1).normal(0.3, 1.2, 5000)
    numpy_counts, _ = np.histogram(live, bins=[-np.inf, *ref["edges"], np.inf])
    assert bin_counts(ref["edges"], live) == numpy_counts.tolist()


def test_tied_values_merge_their_quantile_edges() -> None:
    values = np.r_[np.zeros(700), np.arange(1, 301)]  # 70 % zeros, as for co-occurrence
    ref = numeric_reference(values)
    assert ref["edges"][0] == 0.0 and len(ref["edges"]) == len(set(ref["edges"])) < 9
    assert ref["proportions"][0] == 0.0 and ref["proportions"][1] == pytest.approx(0.7 + 0.0, abs=0.01)


def test_numeric_drift_is_scipy_ks_2samp_and_psi_over_the_reference_bins() -> None:
    rng = np.random.default_rng(2)
    ref = numeric_reference(rng.normal(size=3000))
    live = rng.normal(0.4, 1.0, 800)
    result = numeric_drift(ref, live)
    assert result["ks_p"] == pytest.approx(stats.ks_2samp(ref["sample"], live).pvalue, rel=1e-12)
    counts, _ = np.histogram(live, bins=[-np.inf, *ref["edges"], np.inf])
    shares = counts / counts.sum()
    by_hand = sum((a - e) * math.log(a / e) for a, e in zip(shares, ref["proportions"]))
    assert result["psi"] == pytest.approx(by_hand, rel=1e-9)


def test_categorical_drift_is_the_chi_square_of_the_2xk_table() -> None:
    ref = categorical_reference(["a"] * 300 + ["b"] * 200 + ["c"] * 100 + ["d"] * 50)
    live = ["a"] * 100 + ["b"] * 120 + ["c"] * 40 + ["d"] * 10 + ["e"] * 5  # "e" is new
    result = categorical_drift(ref, live)
    table = np.array([[300, 200, 100, 50, 0], [100, 120, 40, 10, 5]], dtype=float)
    assert result["chi2_p"] == pytest.approx(stats.chi2_contingency(table).pvalue, rel=1e-12)
    # and from the formula: sum (O - E)^2 / E with E = row total x column total / total, 4 dof
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    statistic = ((table - expected) ** 2 / expected).sum()
    assert result["chi2_p"] == pytest.approx(stats.chi2.sf(statistic, 4), rel=1e-9)
    assert result["psi"] == pytest.approx(psi(table[0], table[1]), rel=1e-12)


def _rows(numeric: dict[str, np.ndarray], cats: list[str], score: np.ndarray) -> list[dict]:
    return [{"features": {k: float(v[i]) for k, v in numeric.items()}, "categorical": {"category": cats[i]},
             "score": float(score[i])} for i in range(len(score))]


def test_a_shifted_feature_drifts_and_the_others_do_not() -> None:
    rng = np.random.default_rng(3)
    n = 3000
    reference = build_reference({"x": rng.normal(size=n), "y": rng.exponential(size=n)},
                                {"category": list(rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2]))},
                                rng.uniform(size=n))
    m = 1000
    live = _rows({"x": rng.normal(size=m), "y": rng.exponential(size=m) * 2.0},
                 list(rng.choice(["a", "b", "c"], m, p=[0.5, 0.3, 0.2])), rng.uniform(size=m))
    result = compare(reference, live, Settings())
    drifted = {f["name"]: f["drifted"] for f in result["features"]}
    assert drifted == {"x": False, "y": True, "category": False}
    assert not result["score"]["drifted"] and result["drifted"]
    shifted_cats = _rows({"x": rng.normal(size=m), "y": rng.exponential(size=m)},
                         list(rng.choice(["a", "b", "c"], m, p=[0.2, 0.3, 0.5])), rng.uniform(size=m) ** 3)
    result = compare(reference, shifted_cats, Settings())
    assert {f["name"]: f["drifted"] for f in result["features"]} == {"x": False, "y": False, "category": True}
    assert result["score"]["drifted"]


def test_a_small_significant_shift_is_not_drift_without_psi() -> None:
    rng = np.random.default_rng(4)
    reference = build_reference({"x": rng.normal(size=5000)}, {}, rng.uniform(size=5000))
    live = _rows({"x": rng.normal(0.08, 1.0, 20_000)}, ["a"] * 20_000, rng.uniform(size=20_000))
    (x,) = compare(reference, live, Settings())["features"]
    assert x["ks_p"] < 0.05 and x["psi"] < 0.1 and not x["drifted"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_histogram_percentiles_are_within_a_bucket_of_numpy(seed: int) -> None:
    latencies = np.random.default_rng(seed).lognormal(mean=0.5, sigma=0.7, size=5000)  # ms, ~1.6 ms median
    slots = np.searchsorted(LATENCY_BUCKETS_MS, latencies, side="left")
    hist = np.bincount(slots, minlength=len(LATENCY_BUCKETS_MS) + 1).tolist()
    edges = (0.0, *LATENCY_BUCKETS_MS)
    for q in (0.5, 0.95, 0.99):
        estimate, truth = percentile(hist, q), float(np.percentile(latencies, q * 100))
        slot = int(np.searchsorted(LATENCY_BUCKETS_MS, truth, side="left"))
        width = edges[slot + 1] - edges[slot]
        assert abs(estimate - truth) <= width, (q, estimate, truth)


def test_no_requests_have_no_percentile() -> None:
    assert percentile([0] * (len(LATENCY_BUCKETS_MS) + 1), 0.5) is None
