"""What one read of a monitoring window may cost: at most MAX_POINTS series points, and at most
MAX_STORED stored buckets read (the rollups keep small buckets; a wide window over them is many reads)."""

from __future__ import annotations

import math

from nimbus.errors import InvalidInput

MAX_POINTS = 2000
MAX_STORED = 10_000


def check_window(name: str, window_s: int, bucket_s: int, stored_bucket_s: int) -> None:
    """InvalidInput naming ``name`` when the window spans too many series points or stored buckets."""
    if math.ceil(window_s / bucket_s) > MAX_POINTS:
        raise InvalidInput(f"{name} ({window_s} s) spans more than {MAX_POINTS} buckets of {bucket_s} s; "
                           "widen the bucket or narrow the window")
    if math.ceil(window_s / stored_bucket_s) > MAX_STORED:
        raise InvalidInput(f"{name} ({window_s} s) spans more than {MAX_STORED} stored buckets of "
                           f"{stored_bucket_s} s; narrow the window")
