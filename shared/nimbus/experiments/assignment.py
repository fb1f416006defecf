"""Deterministic assignment of users to variants: GrowthBook's hashing and bucket ranges.

The same user always lands in the same variant of an experiment, on every process and
every cloud, with no state: ``hash_v2(seed, user)`` is GrowthBook's FNV-1a 32-bit
"version 2" hash, ``fnv1a32(str(fnv1a32(seed + user))) % 10000 / 10000``, and the
variant is the one whose range ``[start, end)`` holds that number. Ranges are
GrowthBook's ``getBucketRanges``: consecutive slices of [0, 1) sized by the weights, so
on a two-variant test raising one variant's weight only moves users *into* it — nobody
already in it is moved out. The expected values live in tests/data/growthbook_cases.json,
taken from GrowthBook's own cross-SDK test cases (and, for ids with characters above
U+FFFF, generated with the ``growthbook`` package: GrowthBook hashes UTF-16 code units).

Written here rather than imported: GrowthBook's Python SDK pulls in a feature-flag
client, HTTP and crypto dependencies for these ~20 lines, and the request path imports
as little as it can (cold start).
"""

from __future__ import annotations

from collections.abc import Sequence

FNV_OFFSET = 0x811C9DC5
FNV_PRIME = 0x01000193


def fnv1a32(text: str) -> int:
    """32-bit FNV-1a over the string's UTF-16 code units, as GrowthBook's SDKs hash (the
    JavaScript ``charCodeAt`` loop; the Python SDK encodes UTF-16 with surrogatepass): a
    character above U+FFFF (an emoji) counts as its two surrogates, not as one code point."""
    h = FNV_OFFSET
    if text.isascii():  # one byte per code unit: the common case, without the encode
        for b in text.encode():
            h = ((h ^ b) * FNV_PRIME) & 0xFFFFFFFF
        return h
    data = text.encode("utf-16-le", "surrogatepass")
    for i in range(0, len(data), 2):
        h = ((h ^ (data[i] | data[i + 1] << 8)) * FNV_PRIME) & 0xFFFFFFFF
    return h


def hash_v2(seed: str, value: str) -> float:
    """GrowthBook hash version 2: a number in [0, 1) with four decimals."""
    return (fnv1a32(str(fnv1a32(seed + value))) % 10000) / 10000


def equal_weights(n: int) -> list[float]:
    return [1.0 / n] * n if n > 0 else []


def bucket_ranges(n: int, coverage: float = 1.0, weights: Sequence[float] | None = None) -> list[tuple[float, float]]:
    """GrowthBook's getBucketRanges: one [start, end) per variant.

    Coverage is clamped to [0, 1]; weights of the wrong length, or not summing to 1 within
    0.01, fall back to equal weights (Nimbus validates weights before this, so that is only
    GrowthBook's safety net).
    """
    coverage = min(max(coverage, 0.0), 1.0)
    w = list(weights) if weights is not None else equal_weights(n)
    if len(w) != n or not 0.99 <= sum(w) <= 1.01:
        w = equal_weights(n)
    ranges, cumulative = [], 0.0
    for weight in w:
        start = cumulative
        cumulative += weight
        ranges.append((start, start + coverage * weight))
    return ranges


def choose_variation(n: float, ranges: Sequence[tuple[float, float]]) -> int:
    """The index of the range holding ``n`` (start inclusive, end exclusive), or -1."""
    for i, (start, end) in enumerate(ranges):
        if start <= n < end:
            return i
    return -1


def assign(seed: str, user_id: str, ranges: Sequence[tuple[float, float]]) -> int:
    """The variant index of ``user_id`` in an experiment seeded ``seed`` (-1: not in it)."""
    return choose_variation(hash_v2(seed, user_id), ranges)
