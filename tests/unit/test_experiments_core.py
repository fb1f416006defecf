"""A/B assignment against GrowthBook's shared vectors, and the statistics against statsmodels/scipy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.proportion import proportion_confint, proportions_ztest

from nimbus.experiments import stats
from nimbus.experiments.assignment import assign, bucket_ranges, choose_variation, hash_v2
from nimbus.experiments.exposures import intra_list_diversity
from nimbus.experiments.service import ExperimentSpec

CASES = json.loads((Path(__file__).resolve().parents[1] / "data" / "growthbook_cases.json").read_text())


@pytest.mark.parametrize(("seed", "value", "version", "expected"), CASES["hash"])
def test_hash_v2_matches_growthbooks_vectors(seed: str, value: str, version: int, expected: float) -> None:
    assert version == 2 and hash_v2(seed, value) == expected


def code_point_hash_v2(seed: str, value: str) -> float:
    """The hash as Nimbus computed it before: FNV-1a over code points (wrong above U+FFFF)."""
    def fnv(text: str) -> int:
        h = 0x811C9DC5
        for ch in text:
            h = ((h ^ ord(ch)) * 0x01000193) & 0xFFFFFFFF
        return h
    return (fnv(str(fnv(seed + value))) % 10000) / 10000


@pytest.mark.parametrize(("seed", "value", "version", "expected"), CASES["hash_utf16"])
def test_hash_v2_hashes_utf16_code_units_as_growthbook_does(seed: str, value: str, version: int,
                                                           expected: float) -> None:
    assert version == 2 and hash_v2(seed, value) == expected


def test_the_utf16_vectors_tell_code_units_from_code_points() -> None:
    astral = [c for c in CASES["hash_utf16"] if any(ord(ch) > 0xFFFF for ch in c[0] + c[1])]
    assert len(astral) >= 3
    assert all(code_point_hash_v2(seed, value) != expected for seed, value, _, expected in astral)


def test_hash_v2_agrees_with_the_growthbook_package_on_random_unicode() -> None:
    core = pytest.importorskip("growthbook.core")
    rng = np.random.default_rng(11)
    alphabet = [*"az09-_.@", "\u00e9", "\u65e5", "\U0001F600", "\U0001F680", "\U00010348", "\uFFFD"]
    for _ in range(500):
        seed = "".join(rng.choice(alphabet, size=rng.integers(0, 6)))
        value = "".join(rng.choice(alphabet, size=rng.integers(1, 12)))
        assert hash_v2(seed, value) == core.gbhash(seed, value, 2), (seed, value)


@pytest.mark.parametrize(("name", "args", "expected"), CASES["getBucketRange"], ids=[c[0] for c in CASES["getBucketRange"]])
def test_bucket_ranges_match_growthbooks_vectors(name: str, args: list, expected: list) -> None:
    got = bucket_ranges(*args)
    assert np.allclose(np.array(got, dtype=float), np.array(expected, dtype=float), atol=1e-9), name


@pytest.mark.parametrize(("name", "n", "ranges", "expected"), CASES["chooseVariation"], ids=[c[0] for c in CASES["chooseVariation"]])
def test_choose_variation_matches_growthbooks_vectors(name: str, n: float, ranges: list, expected: int) -> None:
    assert choose_variation(n, [tuple(r) for r in ranges]) == expected


def test_assignment_follows_the_weights_and_is_deterministic() -> None:
    ranges = bucket_ranges(3, 1.0, [0.2, 0.3, 0.5])
    got = [assign("exp-seed", f"user-{i}", ranges) for i in range(30_000)]
    shares = np.bincount(got, minlength=3) / len(got)
    assert np.allclose(shares, [0.2, 0.3, 0.5], atol=0.01)
    assert got == [assign("exp-seed", f"user-{i}", ranges) for i in range(30_000)]
    other = [assign("other-seed", f"user-{i}", ranges) for i in range(30_000)]
    assert np.mean(np.array(got) == np.array(other)) < 0.5  # a new seed reshuffles


def test_raising_a_variants_weight_only_moves_users_into_it() -> None:
    users = [f"u{i}" for i in range(20_000)]
    before = [assign("s", u, bucket_ranges(2, 1.0, [0.9, 0.1])) for u in users]
    after = [assign("s", u, bucket_ranges(2, 1.0, [0.5, 0.5])) for u in users]
    assert all(a == 1 for b, a in zip(before, after) if b == 1)  # treatment users stay in treatment
    moved = sum(1 for b, a in zip(before, after) if b == 0 and a == 1)
    assert 0.35 < moved / len(users) < 0.45


def test_weights_not_summing_to_one_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"sum to 1; they sum to 0\.9") as info:
        ExperimentSpec(name="x", variants=[{"name": "a", "model": "champion", "weight": 0.5},
                                           {"name": "b", "model": "challenger", "weight": 0.4}])
    assert info.value.errors()[0]["loc"] == ("variants",)


@pytest.mark.parametrize(("x1", "n1", "x2", "n2"), [(120, 1000, 100, 1000), (15, 200, 30, 210), (3000, 20000, 2890, 19800)])
def test_z_test_and_wilson_interval_equal_statsmodels(x1: int, n1: int, x2: int, n2: int) -> None:
    z, p = stats.two_proportion_z(x1, n1, x2, n2)
    z_ref, p_ref = proportions_ztest([x1, x2], [n1, n2])
    assert z == pytest.approx(z_ref, rel=1e-9) and p == pytest.approx(p_ref, rel=1e-9)
    lo, hi = stats.wilson_interval(x1, n1)
    lo_ref, hi_ref = proportion_confint(x1, n1, alpha=0.05, method="wilson")
    assert lo == pytest.approx(lo_ref, rel=1e-9) and hi == pytest.approx(hi_ref, rel=1e-9)


@pytest.mark.parametrize(("observed", "weights"), [([600, 400], [0.5, 0.5]), ([498, 502], [0.5, 0.5]),
                                                   ([210, 290, 520], [0.2, 0.3, 0.5])])
def test_srm_chi_square_equals_scipy(observed: list[int], weights: list[float]) -> None:
    check = stats.srm(observed, weights)
    ref = scipy_stats.chisquare(observed, [sum(observed) * w for w in weights])
    assert check["chi2"] == pytest.approx(ref.statistic, rel=1e-9)
    assert check["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert check["flagged"] == (ref.pvalue < 0.001)


def test_a_planted_60_40_split_is_flagged_and_a_fair_one_is_not() -> None:
    assert stats.srm([600, 400], [0.5, 0.5])["flagged"]
    assert not stats.srm([505, 495], [0.5, 0.5])["flagged"]


@pytest.mark.parametrize(("xb", "nb", "xa", "na"), [(60, 500, 45, 500), (10, 100, 12, 100), (0, 50, 0, 50)])
def test_chance_to_beat_control_agrees_with_monte_carlo(xb: int, nb: int, xa: int, na: int) -> None:
    rng = np.random.default_rng(7)
    b = rng.beta(1 + xb, 1 + nb - xb, 400_000)
    a = rng.beta(1 + xa, 1 + na - xa, 400_000)
    assert stats.chance_to_beat(xb, nb, xa, na) == pytest.approx(np.mean(b > a), abs=0.004)


def test_chance_to_beat_control_uses_a_normal_approximation_for_huge_counts() -> None:
    exact = stats.chance_to_beat(199_000, 1_000_000, 198_500, 1_000_000)
    approx = stats.chance_to_beat(201_000, 1_010_000, 198_500, 1_000_000)  # a_b > 200,000: approximated
    assert 0 < exact < 1 and 0 < approx < 1
    rng = np.random.default_rng(1)
    b = rng.beta(1 + 201_000, 1 + 1_010_000 - 201_000, 400_000)
    a = rng.beta(1 + 198_500, 1 + 1_000_000 - 198_500, 400_000)
    assert approx == pytest.approx(np.mean(b > a), abs=0.004)


def variants(control: tuple[int, int, int], treatment: tuple[int, int, int]) -> list[dict]:
    return [{"name": "control", "exposures": control[0], "users": control[1], "clicks": control[2], "purchases": 0},
            {"name": "treatment", "exposures": treatment[0], "users": treatment[1], "clicks": treatment[2],
             "purchases": 0}]


def test_no_verdict_before_the_minimum_sample() -> None:
    out = stats.analyse(variants((50, 50, 5), (50, 50, 30)), [0.5, 0.5], min_exposures=100)
    assert out["verdict"]["status"] == "insufficient_data" and "fewer than 100" in out["verdict"]["reason"]


def test_a_clear_difference_is_a_winner_and_a_tiny_one_is_not() -> None:
    win = stats.analyse(variants((1000, 500, 100), (1000, 500, 160)), [0.5, 0.5])
    assert win["verdict"]["status"] == "winner" and win["verdict"]["winner"] == "treatment"
    ctr = win["variants"][1]["metrics"]["ctr"]
    assert ctr["lift"] == pytest.approx(0.6) and ctr["p_value"] < 0.001 and ctr["chance_to_beat_control"] > 0.99
    assert win["variants"][0]["metrics"]["ctr"]["lift"] is None
    same = stats.analyse(variants((1000, 500, 100), (1000, 500, 104)), [0.5, 0.5])
    assert same["verdict"]["status"] == "no_difference"
    worse = stats.analyse(variants((1000, 500, 160), (1000, 500, 100)), [0.5, 0.5])
    assert worse["verdict"]["winner"] == "control"


def test_a_sample_ratio_mismatch_withholds_the_verdict() -> None:
    out = stats.analyse(variants((1200, 600, 100), (800, 400, 160)), [0.5, 0.5])
    assert out["srm"]["flagged"] and out["verdict"]["status"] == "insufficient_data"
    assert "sample ratio mismatch" in out["verdict"]["reason"]


@pytest.mark.parametrize(("categories", "expected"), [(["a", "a", "a"], 0.0), (["a", "b", "c"], 1.0),
                                                      (["a", "a", "b", "b"], 4 / 6), (["a"], None)])
def test_intra_list_diversity(categories: list[str], expected: float | None) -> None:
    assert intra_list_diversity(categories) == (pytest.approx(expected) if expected is not None else None)
