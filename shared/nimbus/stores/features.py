"""The Redis feature store: online features, real-time counters, live pointers.

This module owns every Redis key layout (``Keys``); nothing else in Nimbus builds a key.

Layout (prefix ``nimbus:v1``):

* batch features, versioned so a refresh never shows readers a half-written set:
  ``fs:{version}:items`` (the item table blob), ``fs:{version}:u:{user}`` (one user's
  vector), ``fs:{version}:meta`` (JSON), ``fs:versions`` (sorted set by time) and one
  pointer ``fs:current`` that is swapped last, atomically;
* real-time features, updated as events arrive: ``rt:u:{user}`` (hash: ``n``, ``last_ts``,
  ``c:{category}`` weighted counts), ``rt:u:{user}:recent`` (list of item ids, newest
  first) and ``rt:seen:{event_id}`` (idempotency marks);
* live models: ``model:{name}:bundle:{version}`` (the serving bundle) and
  ``model:{name}:live`` (hash alias -> version), announced on channel ``events:model``,
  and ``model:{name}:live:log`` (capped list of JSON ``{at, alias, version}``, newest first:
  when each version went live);
* monitoring seams: ``mon:samples:{model}`` (a capped list of served feature vectors);
  ``mon:traffic:{function}:{bucket}`` (hash of request/error/degraded counts and latency
  histogram counts for one function in one time bucket, epoch seconds) and
  ``mon:traffic:functions`` (set of the functions that reported);
* A/B experiments: ``ab:running`` (hash surface -> the running experiment as JSON, set with
  HSETNX so two can never run on one surface; announced on channel ``events:experiments``),
  ``ab:{experiment}:n`` (hash ``{variant}:exposures|clicks|purchases`` -> count),
  ``ab:{experiment}:u:{variant}`` (set of exposed user ids), ``ab:log:exposures`` and
  ``ab:log:outcomes`` (JSON rows waiting for the rollup into MongoDB);
* served answers, for joining outcomes: ``mon:req:{request_id}`` (JSON: user, experiment,
  variant, model version, items, time; expires after the attribution window),
  ``mon:req:{request_id}:{c|p}`` (first click / purchase marks), ``mon:last:{user}`` (the
  user's latest request id);
* recommendation performance: ``perf:{bucket}`` (hash ``{version}|{variant}|{metric}`` ->
  count, plus ``div_sum`` / ``lists``) and ``perf:{bucket}:items`` (HyperLogLog of served
  item ids), one per ``bucket`` (epoch seconds, floored to the bucket size), expiring.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import orjson
import redis

from nimbus.config import Settings
from nimbus.errors import StoreUnavailable
from nimbus.stores import Health
from nimbus.stores._base import PerProcess, redact, timed_health

log = logging.getLogger(__name__)


class Keys:
    """Redis key layouts, versioned by prefix so a layout change never reads old data."""

    PREFIX = "nimbus:v1"

    @classmethod
    def key(cls, *parts: str | int) -> str:
        return ":".join([cls.PREFIX, *(str(p) for p in parts)])

    # batch features
    @classmethod
    def fs_current(cls) -> str:
        return cls.key("fs", "current")

    @classmethod
    def fs_versions(cls) -> str:
        return cls.key("fs", "versions")

    @classmethod
    def fs_items(cls, version: str) -> str:
        return cls.key("fs", version, "items")

    @classmethod
    def fs_meta(cls, version: str) -> str:
        return cls.key("fs", version, "meta")

    @classmethod
    def fs_user(cls, version: str, user_id: str) -> str:
        return cls.key("fs", version, "u", user_id)

    @classmethod
    def fs_pattern(cls, version: str) -> str:
        return cls.key("fs", version, "*")

    # real-time features
    @classmethod
    def rt_user(cls, user_id: str) -> str:
        return cls.key("rt", "u", user_id)

    @classmethod
    def rt_recent(cls, user_id: str) -> str:
        return cls.key("rt", "u", user_id, "recent")

    @classmethod
    def rt_seen(cls, event_id: str) -> str:
        return cls.key("rt", "seen", event_id)

    # live models
    @classmethod
    def model_bundle(cls, name: str, version: str) -> str:
        return cls.key("model", name, "bundle", version)

    @classmethod
    def model_live(cls, name: str) -> str:
        return cls.key("model", name, "live")

    @classmethod
    def model_live_log(cls, name: str) -> str:
        return cls.key("model", name, "live", "log")

    @classmethod
    def channel(cls, topic: str) -> str:
        return cls.key("events", topic)

    # monitoring seams
    @classmethod
    def served_samples(cls, model: str) -> str:
        return cls.key("mon", "samples", model)

    # A/B experiments
    @classmethod
    def ab_running(cls) -> str:
        return cls.key("ab", "running")

    @classmethod
    def ab_counts(cls, experiment: str) -> str:
        return cls.key("ab", experiment, "n")

    @classmethod
    def ab_users(cls, experiment: str, variant: str) -> str:
        return cls.key("ab", experiment, "u", variant)

    @classmethod
    def ab_log(cls, kind: str) -> str:
        return cls.key("ab", "log", kind)

    # served answers and performance buckets
    @classmethod
    def served_request(cls, request_id: str) -> str:
        return cls.key("mon", "req", request_id)

    @classmethod
    def outcome_mark(cls, request_id: str, kind: str) -> str:
        return cls.key("mon", "req", request_id, kind)

    @classmethod
    def last_request(cls, user_id: str) -> str:
        return cls.key("mon", "last", user_id)

    @classmethod
    def perf_bucket(cls, bucket: int) -> str:
        return cls.key("perf", bucket)

    @classmethod
    def perf_items(cls, bucket: int) -> str:
        return cls.key("perf", bucket, "items")
    @classmethod
    def traffic(cls, function: str, bucket: int) -> str:
        return cls.key("mon", "traffic", function, bucket)

    @classmethod
    def traffic_functions(cls) -> str:
        return cls.key("mon", "traffic", "functions")


@dataclass(frozen=True)
class RealtimeEvent:
    """One interaction as the real-time features need it."""

    event_id: str
    user_id: str
    item_id: str
    category: str  # "" when the item is unknown to the current feature set
    weight: float
    ts: float  # epoch seconds


# One round trip per batch, atomic per event: an event id seen before changes nothing.
# KEYS: per event (seen, hash, recent); ARGV: seen_ttl, rt_ttl, recent_n, then per event
# (item, category, weight, ts).
_APPLY_EVENTS = """
local seen_ttl, rt_ttl, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local applied = 0
for e = 0, (#KEYS / 3) - 1 do
  local seen, hash, recent = KEYS[e * 3 + 1], KEYS[e * 3 + 2], KEYS[e * 3 + 3]
  local a = 4 + e * 4
  if redis.call('SET', seen, '1', 'NX', 'EX', seen_ttl) then
    local item, cat, w, ts = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
    redis.call('LREM', recent, 0, item)
    redis.call('LPUSH', recent, item)
    redis.call('LTRIM', recent, 0, n - 1)
    redis.call('HINCRBY', hash, 'n', 1)
    if cat ~= '' then redis.call('HINCRBYFLOAT', hash, 'c:' .. cat, w) end
    local last = tonumber(redis.call('HGET', hash, 'last_ts') or '0')
    if tonumber(ts) > last then redis.call('HSET', hash, 'last_ts', ts) end
    redis.call('EXPIRE', hash, rt_ttl)
    redis.call('EXPIRE', recent, rt_ttl)
    applied = applied + 1
  end
end
return applied
"""


@dataclass(frozen=True)
class ServedRow:
    """One recommendation answer as exposure and performance tracking keep it."""

    request_id: str
    user_id: str
    experiment: str | None
    variant: str | None
    model_version: str | None
    items: tuple[str, ...]
    ts: float
    diversity: float | None  # intra-list category dissimilarity; None for lists under 2 items

    def record(self) -> bytes:
        return orjson.dumps({"request_id": self.request_id, "user_id": self.user_id, "experiment": self.experiment,
                           "variant": self.variant, "model_version": self.model_version,
                           "items": self.items, "ts": self.ts})


@dataclass(frozen=True)
class OutcomeRow:
    """A click or purchase attributed to one served answer."""

    request_id: str
    kind: str  # "c" click | "p" purchase
    served: dict  # the answer's record (ServedRow.record, decoded)
    event_id: str
    ts: float
    joined_by: str  # "request_id" | "user"


METRIC_OF = {"c": "clicks", "p": "purchases"}


# The per-answer writes of a batch as one command (redis-py's per-command pipeline cost was
# most of the flush: measured ~35 us per SET under cProfile). KEYS: n record keys, then n
# last-request keys; ARGV: ttl, n records, n request ids.
_RECORD_SERVED = """
local ttl, n = ARGV[1], #KEYS / 2
for i = 1, n do
  redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ttl)
  redis.call('SET', KEYS[n + i], ARGV[n + i + 1], 'EX', ttl)
end
return n
"""


class FeatureStore(PerProcess):
    """A thin adapter over one Redis connection pool."""

    name = "redis"
    SEEN_TTL_S = 7 * 86400
    RT_TTL_S = 30 * 86400

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.client: redis.Redis = redis.Redis.from_url(
            url,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            health_check_interval=30,
            decode_responses=False,
        )
        self._apply_events = self.client.register_script(_APPLY_EVENTS)
        self._record_served = self.client.register_script(_RECORD_SERVED)

    @classmethod
    def cache_key(cls, settings: Settings) -> str:
        return settings.redis_url

    @classmethod
    def from_settings(cls, settings: Settings) -> FeatureStore:
        return cls(settings.redis_url, settings.store_timeout_s)

    def _unreachable(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(self.name, redact(self.url), str(exc) or type(exc).__name__)

    def ping(self) -> None:
        """Raise StoreUnavailable (naming the URL) unless Redis answers."""
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise self._unreachable(exc) from exc

    def health(self) -> Health:
        def probe() -> dict[str, str]:
            self.ping()
            info = self.client.info("server")
            return {"version": str(info.get("redis_version", "?"))}

        return timed_health(self.name, self.url, probe)

    # ---- batch features -------------------------------------------------------------
    def write_feature_set(
        self, version: str, items_blob: bytes, users: Iterable[tuple[str, bytes]], meta: dict, chunk: int = 2000
    ) -> int:
        """Write every key of a new version (not yet visible); returns the number of users."""
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(Keys.fs_items(version), items_blob)
            count = 0
            for user_id, blob in users:
                pipe.set(Keys.fs_user(version, user_id), blob)
                count += 1
                if count % chunk == 0:
                    pipe.execute()
            pipe.set(Keys.fs_meta(version), json.dumps({**meta, "users": count}))
            pipe.zadd(Keys.fs_versions(), {version: time.time()})
            pipe.execute()
        except redis.RedisError as exc:
            raise self._unreachable(exc) from exc
        return count

    def swap_feature_version(self, version: str) -> str | None:
        """Make ``version`` the one readers see (one atomic SET); returns the previous one."""
        if not self.client.exists(Keys.fs_meta(version)):
            raise ValueError(f"feature version {version} is incomplete: no meta written")
        previous = self.client.set(Keys.fs_current(), version, get=True)
        self.client.publish(Keys.channel("features"), version)
        return previous.decode() if previous else None

    def current_feature_version(self) -> str | None:
        value = self.client.get(Keys.fs_current())
        return value.decode() if value else None

    def feature_meta(self, version: str) -> dict | None:
        raw = self.client.get(Keys.fs_meta(version))
        return json.loads(raw) if raw else None

    def items_blob(self, version: str) -> bytes | None:
        return self.client.get(Keys.fs_items(version))

    def prune_feature_versions(self, keep: int = 2) -> list[str]:
        """Delete all but the ``keep`` newest versions (never the current one)."""
        current = self.current_feature_version()
        versions = [v.decode() for v in self.client.zrevrange(Keys.fs_versions(), 0, -1)]
        dropped = [v for v in versions[keep:] if v != current]
        for version in dropped:
            batch: list[bytes] = []
            for key in self.client.scan_iter(match=Keys.fs_pattern(version), count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    self.client.unlink(*batch)
                    batch = []
            if batch:
                self.client.unlink(*batch)
            self.client.zrem(Keys.fs_versions(), version)
        return dropped

    def read_user(self, version: str, user_id: str, recent_n: int) -> tuple[bytes | None, list[bytes], list[bytes]]:
        """One round trip: batch vector, real-time hash (flat field/value list) and recent items.

        This is the request path's only I/O, so it skips redis-py's Pipeline machinery
        (measured at a third of its cost) and writes the three commands on one pooled
        connection, reading the three replies back. Errors are redis-py's, as usual.
        """
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command(conn.pack_commands([
                ("GET", Keys.fs_user(version, user_id)),
                ("HGETALL", Keys.rt_user(user_id)),
                ("LRANGE", Keys.rt_recent(user_id), 0, recent_n - 1),
            ]))
            blob, counts, recent = conn.read_response(), conn.read_response(), conn.read_response()
        except BaseException:
            conn.disconnect()  # a half-read connection must not go back to the pool
            raise
        finally:
            pool.release(conn)
        return blob, counts, recent

    # ---- real-time features ----------------------------------------------------------
    def apply_events(self, events: Sequence[RealtimeEvent], recent_n: int) -> int:
        """Apply a batch atomically per event; returns how many were new (not seen before)."""
        if not events:
            return 0
        keys: list[str] = []
        args: list[str | float] = [self.SEEN_TTL_S, self.RT_TTL_S, recent_n]
        for e in events:
            keys += [Keys.rt_seen(e.event_id), Keys.rt_user(e.user_id), Keys.rt_recent(e.user_id)]
            args += [e.item_id, e.category, repr(float(e.weight)), repr(float(e.ts))]
        try:
            return int(self._apply_events(keys=keys, args=args))
        except redis.RedisError as exc:
            raise self._unreachable(exc) from exc

    def realtime(self, user_id: str, recent_n: int) -> tuple[dict[str, str], list[str]]:
        """A user's real-time hash and recent items, decoded (for tools and tests)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(Keys.rt_user(user_id))
        pipe.lrange(Keys.rt_recent(user_id), 0, recent_n - 1)
        counts, recent = pipe.execute()
        return {k.decode(): v.decode() for k, v in counts.items()}, [r.decode() for r in recent]

    # ---- live models -----------------------------------------------------------------
    def put_model(self, name: str, version: str, bundle: bytes) -> None:
        self.client.set(Keys.model_bundle(name, version), bundle)

    def get_model(self, name: str, version: str) -> bytes | None:
        return self.client.get(Keys.model_bundle(name, version))

    def set_live(self, name: str, alias: str, version: str, keep_log: int = 500) -> None:
        """Point ``alias`` at ``version``, log when, and tell every serving process at once."""
        entry = json.dumps({"at": time.time(), "alias": alias, "version": str(version)})
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(Keys.model_live(name), alias, version)
        pipe.lpush(Keys.model_live_log(name), entry)
        pipe.ltrim(Keys.model_live_log(name), 0, keep_log - 1)
        pipe.execute()
        self.client.publish(Keys.channel("model"), json.dumps({"model": name, "alias": alias, "version": version}))

    def live(self, name: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.client.hgetall(Keys.model_live(name)).items()}

    def live_log(self, name: str, limit: int = 500) -> list[dict]:
        """When each alias of ``name`` was pointed at which version, newest first."""
        return [json.loads(row) for row in self.client.lrange(Keys.model_live_log(name), 0, limit - 1)]

    # ---- monitoring seams ------------------------------------------------------------
    def push_samples(self, model: str, rows: Sequence[bytes], keep: int = 5000) -> None:
        """Append served feature vectors (JSON rows) to a capped list for drift monitoring."""
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(Keys.served_samples(model), *rows)
        pipe.ltrim(Keys.served_samples(model), 0, keep - 1)
        pipe.execute()

    def samples(self, model: str, limit: int = 5000) -> list[bytes]:
        return self.client.lrange(Keys.served_samples(model), 0, limit - 1)

    def add_traffic(self, counts: dict[tuple[str, int], dict[str, int]], ttl_s: int) -> None:
        """Add per-(function, bucket) field counts to the traffic rollup, one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for (function, bucket), fields in counts.items():
            key = Keys.traffic(function, bucket)
            for name, value in fields.items():
                pipe.hincrby(key, name, value)
            pipe.expire(key, ttl_s)
        pipe.sadd(Keys.traffic_functions(), *{function for function, _ in counts})
        pipe.execute()

    def traffic(self, functions: Sequence[str], buckets: Sequence[int]) -> dict[tuple[str, int], dict[str, int]]:
        """The rollup hashes of every (function, bucket) asked for (empty ones left out)."""
        pipe = self.client.pipeline(transaction=False)
        pairs = [(f, b) for f in functions for b in buckets]
        for function, bucket in pairs:
            pipe.hgetall(Keys.traffic(function, bucket))
        return {pair: {k.decode(): int(v) for k, v in raw.items()}
                for pair, raw in zip(pairs, pipe.execute()) if raw}

    def traffic_functions(self) -> list[str]:
        return sorted(m.decode() for m in self.client.smembers(Keys.traffic_functions()))

    def subscribe(self, *topics: str) -> Iterator[dict]:
        """Messages on the given channels, forever (until the connection fails)."""
        # A connection of its own without a read timeout: a quiet channel is not an error.
        listener = redis.Redis.from_url(self.url, socket_connect_timeout=self.timeout_s, socket_timeout=None,
                                        socket_keepalive=True)
        pubsub = listener.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(*(Keys.channel(t) for t in topics))
        try:
            yield from pubsub.listen()
        finally:
            pubsub.close()
            listener.close()

    # ---- A/B experiments and served answers -------------------------------------------
    def claim_surface(self, surface: str, experiment_json: str) -> bool:
        """Make an experiment the running one on ``surface``; False if another already is."""
        ok = bool(self.client.hsetnx(Keys.ab_running(), surface, experiment_json))
        if ok:
            self.client.publish(Keys.channel("experiments"), surface)
        return ok

    def release_surface(self, surface: str, experiment_id: str) -> None:
        """Clear ``surface`` if ``experiment_id`` runs there."""
        raw = self.client.hget(Keys.ab_running(), surface)
        if raw and json.loads(raw).get("id") == experiment_id:
            self.client.hdel(Keys.ab_running(), surface)
            self.client.publish(Keys.channel("experiments"), surface)

    def running_experiments(self) -> dict[str, dict]:
        """surface -> running experiment (as claimed)."""
        return {k.decode(): json.loads(v) for k, v in self.client.hgetall(Keys.ab_running()).items()}

    @staticmethod
    def _variant(row: ServedRow) -> str:
        return row.variant or "-"

    def record_served(self, rows: Sequence[ServedRow], ttl_s: int, bucket_s: int, keep_s: int,
                      log_cap: int = 1_000_000) -> None:
        """Write a batch of served answers in one round trip: per answer its record (for
        outcome joins), per experiment variant the exposure counts and users, per time
        bucket the performance counters, the item sketch and the diversity sums."""
        if not rows:
            return
        pipe = self.client.pipeline(transaction=False)
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
                counts[(row.experiment, row.variant)] = counts.get((row.experiment, row.variant), 0) + 1
                users.setdefault((row.experiment, row.variant), set()).add(row.user_id)
                log.append(record)
            bucket = int(row.ts // bucket_s * bucket_s)
            fields = buckets.setdefault(bucket, {})
            field = f"{row.model_version or 'none'}|{self._variant(row)}|exposures"
            fields[field] = fields.get(field, 0) + 1
            if row.diversity is not None:
                fields["div_sum"] = fields.get("div_sum", 0.0) + row.diversity
                fields["lists"] = fields.get("lists", 0) + 1
            items.setdefault(bucket, set()).update(row.items)
        self._record_served(keys=record_keys + last_keys, args=[ttl_s, *records, *request_ids], client=pipe)
        for (experiment, variant), n in counts.items():
            pipe.hincrby(Keys.ab_counts(experiment), f"{variant}:exposures", n)
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
        try:
            pipe.execute()
        except redis.RedisError as exc:
            raise self._unreachable(exc) from exc

    def served_records(self, request_ids: Sequence[str]) -> list[dict | None]:
        """The records of served answers (None where unknown or expired)."""
        if not request_ids:
            return []
        raw = self.client.mget([Keys.served_request(r) for r in request_ids])
        return [json.loads(v) if v else None for v in raw]

    def last_requests(self, user_ids: Sequence[str]) -> list[str | None]:
        if not user_ids:
            return []
        return [v.decode() if v else None for v in self.client.mget([Keys.last_request(u) for u in user_ids])]

    def record_outcomes(self, rows: Sequence[OutcomeRow], ttl_s: int, bucket_s: int, keep_s: int,
                        log_cap: int = 1_000_000) -> int:
        """Count each (answer, kind) once: the first click and the first purchase of an answer
        increment its variant's and its time bucket's counters; returns how many were new."""
        if not rows:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for row in rows:
            pipe.set(Keys.outcome_mark(row.request_id, row.kind), row.event_id, nx=True, ex=ttl_s)
        first = pipe.execute()
        pipe = self.client.pipeline(transaction=False)
        new = 0
        for row, is_first in zip(rows, first):
            if not is_first:
                continue
            new += 1
            served, metric = row.served, METRIC_OF[row.kind]
            if served.get("experiment"):
                pipe.hincrby(Keys.ab_counts(served["experiment"]), f"{served['variant']}:{metric}", 1)
                pipe.lpush(Keys.ab_log("outcomes"), json.dumps({
                    "request_id": row.request_id, "event_id": row.event_id, "type": metric[:-1],
                    "experiment": served["experiment"], "variant": served["variant"],
                    "model_version": served.get("model_version"), "user_id": served.get("user_id"),
                    "ts": row.ts, "exposed_ts": served.get("ts"), "joined_by": row.joined_by}))
            bucket = int(served["ts"] // bucket_s * bucket_s)
            pipe.hincrby(Keys.perf_bucket(bucket),
                         f"{served.get('model_version') or 'none'}|{served.get('variant') or '-'}|{metric}", 1)
            pipe.expire(Keys.perf_bucket(bucket), keep_s)
        pipe.ltrim(Keys.ab_log("outcomes"), 0, log_cap - 1)
        pipe.execute()
        return new

    def experiment_counts(self, experiment: str, variants: Sequence[str]) -> dict[str, dict[str, int]]:
        """variant -> {exposures, clicks, purchases, users}, live."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(Keys.ab_counts(experiment))
        for variant in variants:
            pipe.scard(Keys.ab_users(experiment, variant))
        raw, *cards = pipe.execute()
        flat = {k.decode(): int(v) for k, v in raw.items()}
        return {v: {"exposures": flat.get(f"{v}:exposures", 0), "clicks": flat.get(f"{v}:clicks", 0),
                    "purchases": flat.get(f"{v}:purchases", 0), "users": int(n)}
                for v, n in zip(variants, cards)}

    def peek_log(self, kind: str, limit: int = 10_000) -> list[dict]:
        """The ``limit`` oldest rows of an A/B log, oldest first (left in place until ``ack_log``)."""
        return [json.loads(r) for r in reversed(self.client.lrange(Keys.ab_log(kind), -limit, -1))]

    def ack_log(self, kind: str, n: int) -> None:
        """Drop the ``n`` oldest rows of an A/B log (after they were stored elsewhere)."""
        if n:
            self.client.ltrim(Keys.ab_log(kind), 0, -(n + 1))

    def perf_buckets(self, buckets: Sequence[int]) -> list[dict[str, float]]:
        """The performance counters of each bucket (empty dict where none)."""
        pipe = self.client.pipeline(transaction=False)
        for bucket in buckets:
            pipe.hgetall(Keys.perf_bucket(bucket))
        return [{k.decode(): float(v) for k, v in raw.items()} for raw in pipe.execute()]

    def distinct_items(self, buckets: Sequence[int]) -> int:
        """Approximate number of distinct items served over the buckets (HyperLogLog union)."""
        keys = [Keys.perf_items(b) for b in buckets]
        return int(self.client.pfcount(*keys)) if keys else 0


class Watcher:
    """Calls ``refresh`` now, then every ``poll_s`` and whenever a message arrives on ``topics``.

    Pub/sub makes a change seen at once; the poll covers a missed message or a Redis that was
    away (the subscription is retried). Used by every process-local view of Redis state that
    must follow changes: the live models, the running experiments."""

    def __init__(self, store: FeatureStore, topics: Sequence[str], refresh: Callable[[], object],
                 poll_s: float = 2.0, name: str = "watcher") -> None:
        self.store, self.topics, self.refresh, self.poll_s, self.name = store, tuple(topics), refresh, poll_s, name
        self._stop = threading.Event()
        self._started = False

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.refresh()
        threading.Thread(target=self._poll, name=f"{self.name}-poll", daemon=True).start()
        threading.Thread(target=self._listen, name=f"{self.name}-listen", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.refresh()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                for _ in self.store.subscribe(*self.topics):
                    self.refresh()
                    if self._stop.is_set():
                        return
            except Exception as exc:  # Redis away: the poller covers; retry the subscription later
                log.debug("%s listener: %s", self.name, exc)
                self._stop.wait(self.poll_s)
