"""Every Redis key layout of Nimbus and every field format stored under those keys.

Nothing else in Nimbus builds a key or a field name, or parses one back: the stores of
this package write through these functions, and readers (monitoring, experiments) read
through them. ``tests/data/redis_keys.json`` pins each layout and format.

Layout (prefix ``nimbus:v2``; v2 added the Redis Cluster hash tags). Below, ``<x>`` is a
value and ``{...}`` is literal: a hash tag, the part of the key a Redis Cluster hashes to
pick the key's slot, so every key a script or transaction touches together shares one slot:
``{u:<user>}`` (all of one user's keys), ``{x:<experiment>}``, ``{m:<model>}`` and ``{perf}``
(the item sketches a PFCOUNT unions).

* batch features, versioned so a refresh never shows readers a half-written set:
  ``fs:<version>:items`` (the item table blob), ``fs:<version>:{u:<user>}`` (one user's
  vector), ``fs:<version>:meta`` (JSON), ``fs:versions`` (sorted set by time) and one
  pointer ``fs:current`` that is swapped last, atomically;
* real-time features, updated as events arrive: ``rt:{u:<user>}`` (hash: ``n``, ``last_ts``,
  ``c:<category>`` weighted counts), ``rt:{u:<user>}:recent`` (list of item ids, newest
  first) and ``rt:seen:{u:<user>}:<event_id>`` (idempotency marks, per user: one user's event
  ids can never claim, or be claimed by, another's);
* live models: ``model:<name>:bundle:<version>`` (the serving bundle) and
  ``model:{m:<name>}:live`` (hash alias -> version), announced on channel ``events:model``,
  and ``model:{m:<name>}:live:log`` (capped list of JSON ``{at, alias, version}``, newest first:
  when each version went live);
* monitoring seams: ``mon:samples:{model}`` (a capped list of served feature vectors) and
  ``mon:sampled`` (set of the models sampled);
  ``mon:traffic:{function}:{bucket}`` (hash of request/error/degraded counts and latency
  histogram counts for one function in one time bucket, epoch seconds) and
  ``mon:traffic:functions`` (set of the functions that reported); ``mon:served:<model>:<bucket>`` and
  ``mon:served:models``, the same per served model (what ``predict`` answered); ``mon:rollout:<rollout>:<step>:<role>``
  (the same counts and histogram for the candidate or the champion during one step of a canary rollout);
* A/B experiments: ``ab:running`` (hash surface -> the running experiment as JSON, set with
  HSETNX so two can never run on one surface; announced on channel ``events:experiments``),
  ``ab:{x:<experiment>}:n`` (hash ``<variant>:exposures|clicks|purchases`` -> count,
  :func:`ab_count_field`), ``ab:{x:<experiment>}:u:<variant>`` (set of exposed user ids),
  ``ab:log:exposures`` (served records, :meth:`ServedRow.record`) and ``ab:log:outcomes``
  (:func:`outcome_log_row`), JSON rows waiting for the rollup into MongoDB;
* served answers, for joining outcomes: ``mon:req:{request_id}`` (:meth:`ServedRow.record`:
  user, experiment, variant, model version, items, time; expires after the attribution
  window), ``mon:req:{request_id}:{c|p}`` (first click / purchase marks), ``mon:last:{user}``
  (the user's latest request id);
* recommendation performance: ``perf:<bucket>`` (hash ``<version>|<variant>|<metric>`` ->
  count, :func:`perf_field`, plus ``div_sum`` / ``lists``) and ``perf:{perf}:<bucket>:items``
  (HyperLogLog of served item ids), one per ``bucket`` (epoch seconds, floored to the
   bucket size), expiring.

Keys that are only ever used one at a time (or in pipelines, which a cluster splits by node)
carry no tag, so they spread over the cluster.

Ids in keys (users, events, requests) are checked against :data:`nimbus.ids.ID_PATTERN`,
which has no ``:``: a key function refuses (ValueError) an id that could name another key,
e.g. user ``u42:recent`` or request ``R:c`` (``mon:req:R:c`` is request ``R``'s click mark).
Batch feature keys (``fs:<version>:{u:<user>}``) are written from training data and cannot
collide (the tag is theirs alone), so they take any id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

from nimbus.ids import is_id


def _id(value: str) -> str:
    """``value`` when it is a valid id (no key separator); ValueError otherwise."""
    if not is_id(value):
        raise ValueError(f"{value!r} is not a valid id in a Redis key (1-128 of A-Z a-z 0-9 _ . @ -)")
    return value


def _tag(kind: str, value: str) -> str:
    """The hash tag ``{kind:value}``: a Redis Cluster puts every key with the same tag in one slot."""
    return f"{{{kind}:{value}}}"


class Keys:
    """Redis key layouts, versioned by prefix so a layout change never reads old data."""

    PREFIX = "nimbus:v2"

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
        return cls.key("fs", version, _tag("u", user_id))

    @classmethod
    def fs_pattern(cls, version: str) -> str:
        return cls.key("fs", version, "*")

    # real-time features
    @classmethod
    def rt_user(cls, user_id: str) -> str:
        return cls.key("rt", _tag("u", _id(user_id)))

    @classmethod
    def rt_recent(cls, user_id: str) -> str:
        return cls.key("rt", _tag("u", _id(user_id)), "recent")

    @classmethod
    def rt_seen(cls, user_id: str, event_id: str) -> str:
        return cls.key("rt", "seen", _tag("u", _id(user_id)), _id(event_id))

    # live models
    @classmethod
    def model_bundle(cls, name: str, version: str) -> str:
        return cls.key("model", name, "bundle", version)

    @classmethod
    def model_live(cls, name: str) -> str:
        return cls.key("model", _tag("m", name), "live")

    @classmethod
    def model_live_log(cls, name: str) -> str:
        return cls.key("model", _tag("m", name), "live", "log")

    @classmethod
    def models_live(cls) -> str:
        """The set of model names that have a live pointer (what ``/metrics`` reports without a SCAN)."""
        return cls.key("models", "live")

    @classmethod
    def channel(cls, topic: str) -> str:
        return cls.key("events", topic)

    # monitoring seams
    @classmethod
    def served_samples(cls, model: str) -> str:
        return cls.key("mon", "samples", model)

    @classmethod
    def sampled_models(cls) -> str:
        """The set of model names with served samples (what the drift check checks)."""
        return cls.key("mon", "sampled")

    @classmethod
    def traffic(cls, function: str, bucket: int) -> str:
        return cls.key("mon", "traffic", function, bucket)

    @classmethod
    def traffic_functions(cls) -> str:
        return cls.key("mon", "traffic", "functions")

    @classmethod
    def served_traffic(cls, model: str, bucket: int) -> str:
        return cls.key("mon", "served", model, bucket)

    @classmethod
    def served_traffic_models(cls) -> str:
        return cls.key("mon", "served", "models")

    @classmethod
    def rollout_counts(cls, rollout: str, step: int, role: str) -> str:
        return cls.key("mon", "rollout", _id(rollout), step, role)

    # A/B experiments
    @classmethod
    def ab_running(cls) -> str:
        return cls.key("ab", "running")

    @classmethod
    def ab_counts(cls, experiment: str) -> str:
        return cls.key("ab", _tag("x", experiment), "n")

    @classmethod
    def ab_users(cls, experiment: str, variant: str) -> str:
        return cls.key("ab", _tag("x", experiment), "u", variant)

    @classmethod
    def ab_log(cls, kind: str) -> str:
        return cls.key("ab", "log", kind)

    # served answers and performance buckets
    @classmethod
    def served_request(cls, request_id: str) -> str:
        return cls.key("mon", "req", _id(request_id))

    @classmethod
    def outcome_mark(cls, request_id: str, kind: str) -> str:
        return cls.key("mon", "req", _id(request_id), kind)

    @classmethod
    def last_request(cls, user_id: str) -> str:
        return cls.key("mon", "last", _id(user_id))

    @classmethod
    def perf_bucket(cls, bucket: int) -> str:
        return cls.key("perf", bucket)

    @classmethod
    def perf_items(cls, bucket: int) -> str:
        return cls.key("perf", "{perf}", bucket, "items")


# pub/sub topics (channel ``events:{topic}``): what changed, for every process that watches it
FEATURES_TOPIC, MODEL_TOPIC, EXPERIMENTS_TOPIC = "features", "model", "experiments"
REGISTRY_TOPIC = "registry"  # an alias of any registry model moved (the predict function's processes follow it)


# ---- field formats -------------------------------------------------------------------
EXPOSURES = "exposures"
METRIC_OF = {"c": "clicks", "p": "purchases"}  # outcome kind (as in the outcome mark key) -> metric
METRICS = (EXPOSURES, *METRIC_OF.values())
# perf bucket fields besides the per-(version, variant, metric) counts: the diversity sum and its list count
DIV_SUM, LISTS = "div_sum", "lists"
NO_MODEL, NO_VARIANT = "none", "-"  # answers no model served / served outside any experiment


def perf_field(model_version: str | None, variant: str | None, metric: str) -> str:
    """The perf bucket field counting ``metric`` for answers of this model version and variant."""
    return f"{model_version or NO_MODEL}|{variant or NO_VARIANT}|{metric}"


def parse_perf_field(field: str) -> tuple[str, str, str] | None:
    """(model version, variant, metric) of a :func:`perf_field`; None for ``div_sum`` / ``lists``."""
    if field in (DIV_SUM, LISTS):
        return None
    version, variant, metric = field.rsplit("|", 2)
    return version, variant, metric


def ab_count_field(variant: str, metric: str) -> str:
    """The ``ab:{experiment}:n`` field counting ``metric`` for ``variant``."""
    return f"{variant}:{metric}"


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
        """The answer's record (``mon:req:{request_id}`` and the exposure log), JSON; see :func:`decode_served`."""
        return orjson.dumps({"request_id": self.request_id, "user_id": self.user_id, "experiment": self.experiment,
                             "variant": self.variant, "model_version": self.model_version,
                             "items": self.items, "ts": self.ts})


def decode_served(raw: bytes | str) -> dict[str, Any]:
    """A :meth:`ServedRow.record` read back: request_id, user_id, experiment, variant, model_version, items, ts."""
    return json.loads(raw)


@dataclass(frozen=True)
class OutcomeRow:
    """A click or purchase attributed to one served answer."""

    request_id: str
    kind: str  # "c" click | "p" purchase
    served: dict  # the answer's record (decode_served)
    event_id: str
    ts: float
    joined_by: str  # "request_id" | "user"

    @property
    def metric(self) -> str:
        return METRIC_OF[self.kind]


def outcome_log_row(row: OutcomeRow) -> str:
    """The outcome log's JSON row (``ab:log:outcomes``, later a MongoDB document keyed ``{request_id}:{type}``)."""
    served = row.served
    return json.dumps({
        "request_id": row.request_id, "event_id": row.event_id, "type": row.metric[:-1],
        "experiment": served["experiment"], "variant": served["variant"],
        "model_version": served.get("model_version"), "user_id": served.get("user_id"),
        "ts": row.ts, "exposed_ts": served.get("ts"), "joined_by": row.joined_by})
