"""Statistics of an A/B test, from counts alone.

Metrics are proportions per *exposure* (one recommendation answer):
``ctr`` = answers with at least one attributed click / answers, ``conversion`` = answers
with at least one attributed purchase / answers. Per variant and metric:

* ``rate`` and a 95% Wilson score interval (``ci95``) — better than the normal
  approximation at small counts and rates near 0;
* ``lift`` relative to control, ``(rate - control) / control`` (None when control is 0);
* ``p_value`` of the pooled two-proportion z-test against control (two-sided);
* ``chance_to_beat_control``: P(p_variant > p_control) under independent Beta(1 + x,
  1 + n - x) posteriors (uniform priors), in closed form (Evan Miller's sum), exact;

and for the experiment a sample-ratio-mismatch check: a chi-square goodness-of-fit test
of the users per variant against the configured weights, flagged at p < 0.001. A verdict
is given only when every variant has ``min_exposures`` and the split is sound; a winner
needs a p-value under ``alpha`` divided by the number of comparisons (Bonferroni).

scipy.special provides the distributions (scipy is already here through scikit-learn);
the tests hold these numbers to statsmodels and scipy.stats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import special

Z95 = 1.959963984540054  # the 97.5% normal quantile
SRM_ALPHA = 0.001


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ((0, 0) when n is 0)."""
    if n <= 0:
        return 0.0, 0.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """Pooled two-proportion z statistic of sample 1 against sample 2, and its two-sided p-value."""
    if n1 <= 0 or n2 <= 0:
        return 0.0, 1.0
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (x1 / n1 - x2 / n2) / se
    return z, float(2 * special.ndtr(-abs(z)))


def chance_to_beat(x_b: int, n_b: int, x_a: int, n_a: int) -> float:
    """P(p_B > p_A) for Beta(1 + x, 1 + n - x) posteriors, exactly (Evan Miller's formula).

    Sums ``x_b + 1`` terms; with counts in the millions use the normal approximation of
    the two posteriors instead (same answer to many decimals at that size).
    """
    a_a, b_a, a_b, b_b = 1 + x_a, 1 + n_a - x_a, 1 + x_b, 1 + n_b - x_b
    if a_b > 200_000:
        mean_a, mean_b = a_a / (a_a + b_a), a_b / (a_b + b_b)
        var_a = a_a * b_a / ((a_a + b_a) ** 2 * (a_a + b_a + 1))
        var_b = a_b * b_b / ((a_b + b_b) ** 2 * (a_b + b_b + 1))
        return float(special.ndtr((mean_b - mean_a) / math.sqrt(var_a + var_b)))
    i = np.arange(a_b, dtype=np.float64)
    terms = (special.betaln(a_a + i, b_a + b_b) - np.log(b_b + i) - special.betaln(1 + i, b_b)
             - special.betaln(a_a, b_a))
    return float(min(1.0, max(0.0, np.exp(terms).sum())))


def srm(observed: Sequence[int], weights: Sequence[float]) -> dict[str, Any]:
    """Sample-ratio mismatch: chi-square goodness of fit of ``observed`` to ``weights``."""
    total = sum(observed)
    expected = [total * w for w in weights]
    if total == 0:
        return {"chi2": 0.0, "p_value": 1.0, "flagged": False, "observed": list(observed), "expected": expected}
    chi2 = sum((o - e) ** 2 / e for o, e in zip(observed, expected) if e > 0)
    p = float(special.chdtrc(len(observed) - 1, chi2))
    return {"chi2": chi2, "p_value": p, "flagged": p < SRM_ALPHA, "observed": list(observed),
            "expected": [round(e, 3) for e in expected]}


def metric(x: int, n: int, control: tuple[int, int] | None) -> dict[str, Any]:
    """One metric of one variant; ``control`` is (successes, n) of the control, None for control itself."""
    lo, hi = wilson_interval(x, n)
    rate = x / n if n else 0.0
    out: dict[str, Any] = {"rate": rate, "ci95": [lo, hi], "lift": None, "p_value": None,
                           "chance_to_beat_control": None}
    if control is not None:
        cx, cn = control
        c_rate = cx / cn if cn else 0.0
        out["lift"] = (rate - c_rate) / c_rate if c_rate > 0 else None
        out["p_value"] = two_proportion_z(x, n, cx, cn)[1]
        out["chance_to_beat_control"] = chance_to_beat(x, n, cx, cn)
    return out


def analyse(variants: Sequence[dict[str, Any]], weights: Sequence[float], primary: str = "ctr",
            min_exposures: int = 100, alpha: float = 0.05) -> dict[str, Any]:
    """Metrics per variant, SRM and a verdict.

    ``variants``: [{name, exposures, users, clicks, purchases}], control first.
    Returns {variants: [... with metrics], srm, verdict}.
    """
    control = variants[0]
    rows = []
    for i, v in enumerate(variants):
        n = v["exposures"]
        rows.append({**v, "metrics": {
            "ctr": metric(v["clicks"], n, None if i == 0 else (control["clicks"], control["exposures"])),
            "conversion": metric(v["purchases"], n, None if i == 0 else (control["purchases"], control["exposures"])),
        }})
    check = srm([v["users"] for v in variants], weights)
    return {"variants": rows, "srm": check, "verdict": verdict(rows, check, primary, min_exposures, alpha)}


def verdict(rows: Sequence[dict[str, Any]], check: dict[str, Any], primary: str, min_exposures: int,
            alpha: float) -> dict[str, Any]:
    short = [r["name"] for r in rows if r["exposures"] < min_exposures]
    if short:
        return {"status": "insufficient_data", "winner": None, "metric": primary,
                "reason": f"fewer than {min_exposures} exposures in: {', '.join(short)}"}
    if check["flagged"]:
        return {"status": "insufficient_data", "winner": None, "metric": primary,
                "reason": f"sample ratio mismatch (chi-square p = {check['p_value']:.2g} < {SRM_ALPHA}): "
                          "the split is not the configured one; fix assignment before trusting any result"}
    threshold = alpha / max(1, len(rows) - 1)  # Bonferroni over the comparisons with control
    better = [r for r in rows[1:] if r["metrics"][primary]["p_value"] < threshold
              and r["metrics"][primary]["rate"] > rows[0]["metrics"][primary]["rate"]]
    worse = [r for r in rows[1:] if r["metrics"][primary]["p_value"] < threshold
             and r["metrics"][primary]["rate"] < rows[0]["metrics"][primary]["rate"]]
    if better:
        best = max(better, key=lambda r: r["metrics"][primary]["rate"])
        m = best["metrics"][primary]
        return {"status": "winner", "winner": best["name"], "metric": primary,
                "reason": f"{best['name']} beats {rows[0]['name']} on {primary}: lift {m['lift']:+.1%}, "
                          f"p = {m['p_value']:.2g} < {threshold:.3g}"}
    if len(worse) == len(rows) - 1:
        return {"status": "winner", "winner": rows[0]["name"], "metric": primary,
                "reason": f"{rows[0]['name']} (control) beats every other variant on {primary} "
                          f"(p < {threshold:.3g})"}
    return {"status": "no_difference", "winner": None, "metric": primary,
            "reason": f"no variant differs from {rows[0]['name']} on {primary} at p < {threshold:.3g}"}
