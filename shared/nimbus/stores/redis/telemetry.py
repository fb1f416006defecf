"""Traffic telemetry in Redis: the cross-process rollup of the HTTP functions' counts (the field
names are :mod:`nimbus.monitoring.traffic`'s)."""

from __future__ import annotations

from collections.abc import Sequence

from nimbus.stores.redis.base import RedisStore
from nimbus.stores.redis.keys import Keys


class TelemetryStore(RedisStore):
    """Per (function, time bucket) counter hashes, and the set of functions that reported."""

    def add_traffic(self, counts: dict[tuple[str, int], dict[str, int]], ttl_s: int) -> None:
        """Add per-(function, bucket) field counts to the traffic rollup, one round trip."""
        with self.redis as r:
            pipe = r.pipeline(transaction=False)
            for (function, bucket), fields in counts.items():
                key = Keys.traffic(function, bucket)
                for name, value in fields.items():
                    pipe.hincrby(key, name, value)
                pipe.expire(key, ttl_s)
            pipe.sadd(Keys.traffic_functions(), *{function for function, _ in counts})
            pipe.execute()

    def traffic(self, functions: Sequence[str], buckets: Sequence[int]) -> dict[tuple[str, int], dict[str, int]]:
        """The rollup hashes of every (function, bucket) asked for (empty ones left out)."""
        pairs = [(f, b) for f in functions for b in buckets]
        with self.redis as r:
            pipe = r.pipeline(transaction=False)
            for function, bucket in pairs:
                pipe.hgetall(Keys.traffic(function, bucket))
            answers = pipe.execute()
        return {pair: {k.decode(): int(v) for k, v in raw.items()} for pair, raw in zip(pairs, answers) if raw}

    def traffic_functions(self) -> list[str]:
        with self.redis as r:
            members = r.smembers(Keys.traffic_functions())
        return sorted(m.decode() for m in members)

    def add_rollout_counts(self, counts: dict[tuple[str, int, str], dict[str, int]], ttl_s: int) -> None:
        """Add per-(rollout, step, role) field counts (the traffic fields), one round trip."""
        with self.redis as r:
            pipe = r.pipeline(transaction=False)
            for (rollout, step, role), fields in counts.items():
                key = Keys.rollout_counts(rollout, step, role)
                for name, value in fields.items():
                    pipe.hincrby(key, name, value)
                pipe.expire(key, ttl_s)
            pipe.execute()

    def rollout_counts(self, rollout: str, step: int, roles: Sequence[str]) -> dict[str, dict[str, int]]:
        """The counts of each role in one step of a rollout (a role with none: an empty dict)."""
        with self.redis as r:
            pipe = r.pipeline(transaction=False)
            for role in roles:
                pipe.hgetall(Keys.rollout_counts(rollout, step, role))
            answers = pipe.execute()
        return {role: {k.decode(): int(v) for k, v in raw.items()} for role, raw in zip(roles, answers)}
