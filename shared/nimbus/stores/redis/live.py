"""Live models in Redis: serving bundles, the live pointer per alias (and its log), announced
on channel ``events:model``, and the served samples (and the set of sampled models) that drift monitoring reads."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence

from nimbus.stores.redis.base import RedisStore
from nimbus.stores.redis.keys import MODEL_TOPIC, REGISTRY_TOPIC, Keys


class LiveModelStore(RedisStore):
    """What every serving process serves: bundles and alias -> version pointers."""

    def put_model(self, name: str, version: str, bundle: bytes) -> None:
        with self.redis as r:
            r.set(Keys.model_bundle(name, version), bundle)

    def get_model(self, name: str, version: str) -> bytes | None:
        with self.redis as r:
            return r.get(Keys.model_bundle(name, version))

    def set_live(self, name: str, alias: str, version: str, keep_log: int = 500) -> None:
        """Point ``alias`` at ``version``, log when, and tell every serving process at once."""
        entry = json.dumps({"at": time.time(), "alias": alias, "version": str(version)})
        with self.redis as r:
            if self.cluster:  # the set of names has a slot of its own; a reader skips a name with no pointer yet
                r.sadd(Keys.models_live(), name)
            pipe = r.pipeline(transaction=True)  # the pointer and its log share the slot of {m:<name>}
            pipe.hset(Keys.model_live(name), alias, version)
            if not self.cluster:
                pipe.sadd(Keys.models_live(), name)
            pipe.lpush(Keys.model_live_log(name), entry)
            pipe.ltrim(Keys.model_live_log(name), 0, keep_log - 1)
            pipe.execute()
        self.publish(MODEL_TOPIC, json.dumps({"model": name, "alias": alias, "version": version}))

    def announce_alias(self, name: str, alias: str, version: str) -> None:
        """Tell every process serving registry models (``predict``) that ``name@alias`` is now ``version``."""
        self.publish(REGISTRY_TOPIC, json.dumps({"model": name, "alias": alias, "version": str(version)}))

    def live(self, name: str) -> dict[str, str]:
        with self.redis as r:
            raw = r.hgetall(Keys.model_live(name))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def live_models(self, also: Sequence[str] = ()) -> dict[str, dict[str, str]]:
        """Every model with a live pointer: ``{model: {alias: version}}`` (one SMEMBERS, one pipelined read).

        ``also``: names to read even if the set lacks them (pointers published before the set existed)."""
        with self.redis as r:
            names = sorted({n.decode() for n in r.smembers(Keys.models_live())} | set(also))
            pipe = r.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(Keys.model_live(name))
            rows = pipe.execute() if names else []
        return {name: {k.decode(): v.decode() for k, v in raw.items()} for name, raw in zip(names, rows) if raw}

    def live_log(self, name: str, limit: int = 500) -> list[dict]:
        """When each alias of ``name`` was pointed at which version (``{at, alias, version}``), newest first."""
        with self.redis as r:
            rows = r.lrange(Keys.model_live_log(name), 0, limit - 1)
        return [json.loads(row) for row in rows]

    # ---- drift samples ---------------------------------------------------------------
    def push_samples(self, model: str, rows: Sequence[bytes], keep: int = 5000) -> None:
        """Append served feature vectors (JSON rows) to a capped list for drift monitoring."""
        self.push_samples_of({model: rows}, keep)

    def push_samples_of(self, rows: Mapping[str, Sequence[bytes]], keep: int = 5000) -> None:
        """Append each model's served rows (JSON) to its capped list and name the models in the set of
        sampled models, in one pipelined round trip (a cluster's pipeline sends one batch per node)."""
        with self.redis as r:
            pipe = r.pipeline(transaction=False)
            for model, batch in rows.items():
                pipe.lpush(Keys.served_samples(model), *batch)
                pipe.ltrim(Keys.served_samples(model), 0, keep - 1)
            pipe.sadd(Keys.sampled_models(), *rows)
            pipe.execute()

    def samples(self, model: str, limit: int = 5000) -> list[bytes]:
        with self.redis as r:
            return r.lrange(Keys.served_samples(model), 0, limit - 1)

    def sampled_models(self) -> list[str]:
        """Every model whose served rows were sampled (the drift check's list of what to check)."""
        with self.redis as r:
            return sorted(n.decode() for n in r.smembers(Keys.sampled_models()))
