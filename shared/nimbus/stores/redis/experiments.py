"""A/B experiments in Redis: the running experiment per surface (announced on channel
``events:experiments``), served answers and their outcomes, live counts, the logs waiting for
MongoDB, and the recommendation performance buckets. Field formats: :mod:`nimbus.stores.redis.keys`."""

from __future__ import annotations

import json
from collections.abc import Sequence

from redis.commands.core import Script

from nimbus.stores.redis.base import RedisStore
from nimbus.stores.redis.keys import (
    DIV_SUM,
    EXPERIMENTS_TOPIC,
    EXPOSURES,
    LISTS,
    METRICS,
    Keys,
    OutcomeRow,
    ServedRow,
    ab_count_field,
    decode_served,
    outcome_log_row,
    perf_field,
)

# The per-answer writes of a batch as one command (redis-py's per-command pipeline cost was
# most of the flush: measured ~35 us per SET under cProfile). KEYS: n record keys, then n
# last-request keys; ARGV: ttl, n records, n request ids. One Redis only: on a cluster these keys
# spread over every slot, so there they are plain SETs in the cluster pipeline (one batch per node).
_RECORD_SERVED = """
local ttl, n = ARGV[1], #KEYS / 2
for i = 1, n do
  redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ttl)
  redis.call('SET', KEYS[n + i], ARGV[n + i + 1], 'EX', ttl)
end
return n
"""


class ExperimentStore(RedisStore):
    """Running experiments, exposures and outcomes, counts, logs and performance buckets."""

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        super().__init__(url, timeout_s)
        self._record_served: Script | None = None

    # ---- running experiments ---------------------------------------------------------
    def claim_surface(self, surface: str, experiment_json: str) -> bool:
        """Make an experiment the running one on ``surface``; False if another already is."""
        with self.redis as r:
            ok = bool(r.hsetnx(Keys.ab_running(), surface, experiment_json))
        if ok:
            self.publish(EXPERIMENTS_TOPIC, surface)
        return ok

    def release_surface(self, surface: str, experiment_id: str) -> None:
        """Clear ``surface`` if ``experiment_id`` runs there."""
        with self.redis as r:
            raw = r.hget(Keys.ab_running(), surface)
            if not (raw and json.loads(raw).get("id") == experiment_id):
                return
            r.hdel(Keys.ab_running(), surface)
        self.publish(EXPERIMENTS_TOPIC, surface)

    def running_experiments(self) -> dict[str, dict]:
        """surface -> running experiment (as claimed)."""
        with self.redis as r:
            raw = r.hgetall(Keys.ab_running())
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    # ---- served answers and outcomes -------------------------------------------------
    def record_served(self, rows: Sequence[ServedRow], ttl_s: int, bucket_s: int, keep_s: int,
                      log_cap: int = 1_000_000) -> None:
        """Write a batch of served answers in one round trip: per answer its record (for
        outcome joins), per experiment variant the exposure counts and users, per time
        bucket the performance counters, the item sketch and the diversity sums."""
        if not rows:
            return
        counts: dict[tuple[str, str], int] = {}
        users: dict[tuple[str, str], set[str]] = {}
        buckets: dict[int, dict[str, float]] = {}
        items: dict[int, set[str]] = {}
        log: list[bytes] = []
        record_keys, last_keys, records, request_ids = [], [], [], []
        for row in rows:
            record = row.record()
            record_keys.append(Keys.served_request(row.request_id))
            last_keys.append(Keys.last_request(row.user_id))
            records.append(record)
            request_ids.append(row.request_id)
            if row.experiment:
                arm = (row.experiment, str(row.variant))  # the serving side sets both or neither
                counts[arm] = counts.get(arm, 0) + 1
                users.setdefault(arm, set()).add(row.user_id)
                log.append(record)
            bucket = int(row.ts // bucket_s * bucket_s)
            fields = buckets.setdefault(bucket, {})
            field = perf_field(row.model_version, row.variant, EXPOSURES)
            fields[field] = fields.get(field, 0) + 1
            if row.diversity is not None:
                fields[DIV_SUM] = fields.get(DIV_SUM, 0.0) + row.diversity
                fields[LISTS] = fields.get(LISTS, 0) + 1
            items.setdefault(bucket, set()).update(row.items)
        with self.redis as r:
            pipe = r.pipeline(transaction=False)
            if self.cluster:
                for key, value in zip(record_keys + last_keys, records + request_ids):
                    pipe.set(key, value, ex=ttl_s)
            else:
                if self._record_served is None:
                    self._record_served = r.register_script(_RECORD_SERVED)
                self._record_served(keys=record_keys + last_keys, args=[ttl_s, *records, *request_ids], client=pipe)
            for (experiment, variant), n in counts.items():
                pipe.hincrby(Keys.ab_counts(experiment), ab_count_field(variant, EXPOSURES), n)
                pipe.sadd(Keys.ab_users(experiment, variant), *users[(experiment, variant)])
            for bucket, fields in buckets.items():
                key = Keys.perf_bucket(bucket)
                for field, value in fields.items():
                    if isinstance(value, float):
                        pipe.hincrbyfloat(key, field, value)
                    else:
                        pipe.hincrby(key, field, value)
                pipe.expire(key, keep_s)
                if items[bucket]:
                    pipe.pfadd(Keys.perf_items(bucket), *items[bucket])
                    pipe.expire(Keys.perf_items(bucket), keep_s)
            if log:
                pipe.lpush(Keys.ab_log("exposures"), *log)
                pipe.ltrim(Keys.ab_log("exposures"), 0, log_cap - 1)
            pipe.execute()

    def served_records(self, request_ids: Sequence[str]) -> list[dict | None]:
        """The records of served answers (None where unknown or expired)."""
        if not request_ids:
            return []
        with self.redis:
            raw = self.get_many([Keys.served_request(rid) for rid in request_ids])
        return [decode_served(v) if v else None for v in raw]

    def last_requests(self, user_ids: Sequence[str]) -> list[str | None]:
        if not user_ids:
            return []
        with self.redis:
            raw = self.get_many([Keys.last_request(u) for u in user_ids])
        return [v.decode() if v else None for v in raw]

    def record_outcomes(self, rows: Sequence[OutcomeRow], ttl_s: int, bucket_s: int, keep_s: int,
                        log_cap: int = 1_000_000) -> int:
        """Count each (answer, kind) once: the first click and the first purchase of an answer
        increment its variant's and its time bucket's counters; returns how many were new."""
        if not rows:
            return 0
        new = 0
        with self.redis as r:
            pipe = r.pipeline(transaction=False)
            for row in rows:
                pipe.set(Keys.outcome_mark(row.request_id, row.kind), row.event_id, nx=True, ex=ttl_s)
            first = pipe.execute()
            pipe = r.pipeline(transaction=False)
            for row, is_first in zip(rows, first):
                if not is_first:
                    continue
                new += 1
                served, metric = row.served, row.metric
                if served.get("experiment"):
                    pipe.hincrby(Keys.ab_counts(served["experiment"]), ab_count_field(served["variant"], metric), 1)
                    pipe.lpush(Keys.ab_log("outcomes"), outcome_log_row(row))
                bucket = int(served["ts"] // bucket_s * bucket_s)
                pipe.hincrby(Keys.perf_bucket(bucket), perf_field(served.get("model_version"), served.get("variant"),
                                                                  metric), 1)
                pipe.expire(Keys.perf_bucket(bucket), keep_s)
            pipe.ltrim(Keys.ab_log("outcomes"), 0, log_cap - 1)
            pipe.execute()
        return new

    # ---- counts and logs -------------------------------------------------------------
    def experiment_counts(self, experiment: str, variants: Sequence[str]) -> dict[str, dict[str, int]]:
        """variant -> {exposures, clicks, purchases, users}, live."""
        with self.redis as r:
            pipe = r.pipeline(transaction=False)
            pipe.hgetall(Keys.ab_counts(experiment))
            for variant in variants:
                pipe.scard(Keys.ab_users(experiment, variant))
            raw, *cards = pipe.execute()
        flat = {k.decode(): int(v) for k, v in raw.items()}
        return {v: {**{m: flat.get(ab_count_field(v, m), 0) for m in METRICS}, "users": int(n)}
                for v, n in zip(variants, cards)}

    def peek_log(self, kind: str, limit: int = 10_000) -> list[bytes]:
        """The ``limit`` oldest rows of an A/B log, oldest first, as stored (JSON; the reader
        decodes, so one bad row cannot hide the others); left in place until ``ack_log``."""
        with self.redis as r:
            rows = r.lrange(Keys.ab_log(kind), -limit, -1)
        return list(reversed(rows))

    def ack_log(self, kind: str, n: int) -> None:
        """Drop the ``n`` oldest rows of an A/B log (after they were stored elsewhere)."""
        if n:
            with self.redis as r:
                r.ltrim(Keys.ab_log(kind), 0, -(n + 1))

    # ---- performance buckets ---------------------------------------------------------
    def perf_buckets(self, buckets: Sequence[int]) -> list[dict[str, float]]:
        """The performance counters of each bucket (empty dict where none); fields: keys.perf_field, DIV_SUM, LISTS."""
        with self.redis as r:
            pipe = r.pipeline(transaction=False)
            for bucket in buckets:
                pipe.hgetall(Keys.perf_bucket(bucket))
            answers = pipe.execute()
        return [{k.decode(): float(v) for k, v in raw.items()} for raw in answers]

    def distinct_items(self, buckets: Sequence[int]) -> int:
        """Approximate number of distinct items served over the buckets (HyperLogLog union)."""
        keys = [Keys.perf_items(b) for b in buckets]
        if not keys:
            return 0
        with self.redis as r:
            return int(r.pfcount(*keys))
