"""Traffic telemetry in Redis: the cross-process rollup of the HTTP functions' counts (the field
names are :mod:`nimbus.monitoring.traffic`'s)."""

from __future__ import annotations

from collections.abc import Sequence

from nimbus.stores.redis.base import RedisStore
from nimbus.stores.redis.keys import Keys

FUNCTIONS, MODELS = "functions", "models"  # what a traffic rollup is kept per: HTTP function, served model
_LAYOUT = {FUNCTIONS: (Keys.traffic, Keys.traffic_functions),
           MODELS: (Keys.served_traffic, Keys.served_traffic_models)}


class TelemetryStore(RedisStore):
    """Per (function or served model, time bucket) counter hashes, and the set of names that reported."""

    def add_traffic(self, counts: dict[tuple[str, int], dict[str, int]], ttl_s: int, of: str = FUNCTIONS) -> None:
        """Add per-(name, bucket) field counts to the traffic rollup ``of`` functions or models, one round trip."""
        bucket_key, names_key = _LAYOUT[of]
        with self.redis as r:
            pipe = r.pipeline(transaction=False)
            _add_counts(pipe, {bucket_key(name, bucket): fields for (name, bucket), fields in counts.items()}, ttl_s)
            pipe.sadd(names_key(), *{name for name, _ in counts})
            pipe.execute()

    def traffic(self, names: Sequence[str], buckets: Sequence[int],
                of: str = FUNCTIONS) -> dict[tuple[str, int], dict[str, int]]:
        """The rollup hashes of every (name, bucket) asked for (empty ones left out)."""
        bucket_key = _LAYOUT[of][0]
        pairs = [(f, b) for f in names for b in buckets]
        with self.redis as r:
            pipe = r.pipeline(transaction=False)
            for name, bucket in pairs:
                pipe.hgetall(bucket_key(name, bucket))
            answers = pipe.execute()
        return {pair: {k.decode(): int(v) for k, v in raw.items()} for pair, raw in zip(pairs, answers) if raw}

    def traffic_functions(self, of: str = FUNCTIONS) -> list[str]:
        """The names (functions, or served models) that ever reported (until the set is emptied)."""
        with self.redis as r:
            members = r.smembers(_LAYOUT[of][1]())
        return sorted(m.decode() for m in members)

    def add_rollout_counts(self, counts: dict[tuple[str, int, str], dict[str, int]], ttl_s: int) -> None:
        """Add per-(rollout, step, role) field counts (the traffic fields), one round trip."""
        with self.redis as r:
            pipe = r.pipeline(transaction=False)
            _add_counts(pipe, {Keys.rollout_counts(*key): fields for key, fields in counts.items()}, ttl_s)
            pipe.execute()

    def rollout_counts(self, rollout: str, step: int, roles: Sequence[str]) -> dict[str, dict[str, int]]:
        """The counts of each role in one step of a rollout (a role with none: an empty dict)."""
        with self.redis as r:
            pipe = r.pipeline(transaction=False)
            for role in roles:
                pipe.hgetall(Keys.rollout_counts(rollout, step, role))
            answers = pipe.execute()
        return {role: {k.decode(): int(v) for k, v in raw.items()} for role, raw in zip(roles, answers)}


def _add_counts(pipe: object, counts: dict[str, dict[str, int]], ttl_s: int) -> None:
    """HINCRBY each field of each counter hash, and (re)set the hash's expiry, on ``pipe``."""
    for key, fields in counts.items():
        for field, value in fields.items():
            pipe.hincrby(key, field, value)  # type: ignore[attr-defined]
        pipe.expire(key, ttl_s)  # type: ignore[attr-defined]
