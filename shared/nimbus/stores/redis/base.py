"""What every Redis store shares: one connection pool per Redis URL per process, and the one
way a store talks to Redis (:attr:`RedisStore.redis`), which turns any redis-py error
(refused connection, timeout, ...) into :class:`nimbus.errors.StoreUnavailable` naming the URL,
and an error reply about the data under a key (WRONGTYPE, ...) into its subclass
:class:`nimbus.errors.StoreDataError`.

Pub/sub lives here too: each store announces its changes on ``events:{topic}``
(:meth:`RedisStore.publish`) and :class:`nimbus.stores.redis.watcher.Watcher` follows them.

A Redis Cluster is named by the scheme ``redis+cluster://`` (``rediss+cluster://`` for TLS)
with any node as host: the client is then a :class:`redis.cluster.RedisCluster`, which learns the
other nodes from that one. Every multi-key command and script keeps its keys in one slot (hash
tags in :mod:`nimbus.stores.redis.keys`); calls that span many users go through a cluster
pipeline, which sends one batch per node. :attr:`RedisStore.cluster` tells the stores which.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Self

import redis
from redis.cluster import RedisCluster

from nimbus.config import Settings
from nimbus.errors import StoreDataError, StoreUnavailable
from nimbus.stores import Health
from nimbus.stores._base import PerProcess, redact, timed_health
from nimbus.stores.redis.keys import Keys

_clients: dict[tuple[str, float], redis.Redis | RedisCluster] = {}
_clients_lock = threading.Lock()

# URL scheme of a Redis Cluster -> the scheme redis-py's RedisCluster.from_url takes
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def cluster_url(url: str) -> str | None:
    """The ``redis://`` URL RedisCluster takes when ``url`` names a cluster (``redis+cluster://``), else None."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower()) if sep else None
    return f"{plain}://{rest}" if plain else None


def connect(url: str, timeout_s: float, read_timeout: bool = True, **options: object) -> redis.Redis | RedisCluster:
    """A new client for ``url``: a RedisCluster for ``redis+cluster://``, else a Redis (no I/O for
    a Redis; a RedisCluster asks its first node for the slot map, so it fails here when none answers)."""
    common = {"socket_connect_timeout": timeout_s, "socket_timeout": timeout_s if read_timeout else None,
              "decode_responses": False}
    plain = cluster_url(url)
    if plain is not None:
        return RedisCluster.from_url(plain, **common, **options)
    return redis.Redis.from_url(url, health_check_interval=30, **common, **options)


def shared_client(url: str, timeout_s: float) -> redis.Redis | RedisCluster:
    """This process's client (and so its connection pool) for ``url`` with this socket timeout.

    Every store on one Redis shares it; the recommend request path asks for its own, with
    the short ``request_timeout_s``, so a slow Redis degrades answers instead of stalling them.
    """
    key = (url, timeout_s)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = connect(url, timeout_s)
        return client


# Error replies that mean the server cannot serve anyone right now (not a problem of one key),
# a cluster without a slot map or between failovers among them.
_OUTAGES = (redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError, redis.exceptions.BusyLoadingError,
            redis.exceptions.ClusterError, redis.exceptions.TryAgainError, redis.exceptions.AskError)
_FAILURES = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)


def _plain(commands: list[tuple]) -> bool:
    return all(type(arg) in (str, int, bytes) for command in commands for arg in command)


def resp(commands: list[tuple]) -> bytes:
    """``commands`` (their arguments str, int or bytes) as one RESP write, the bytes redis-py's
    ``pack_commands`` sends (a unit test holds the two equal) in a tenth of its time: this is the
    request path's only write."""
    out = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = arg if type(arg) is bytes else str(arg).encode()
            out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


class Guarded:
    """``with store.redis as r:`` hands out the client; a redis-py or socket error inside the
    block leaves it as StoreUnavailable. Stateless, so one per store serves every thread."""

    __slots__ = ("name", "store", "url")

    def __init__(self, store: RedisStore, name: str, url: str) -> None:
        self.store, self.name, self.url = store, name, url

    def __enter__(self) -> redis.Redis | RedisCluster:
        try:
            return self.store.client
        except _FAILURES as exc:  # a cluster none of whose nodes answered
            raise StoreUnavailable(self.name, self.url, str(exc) or type(exc).__name__) from exc

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None and issubclass(exc_type, _FAILURES):
            reason = str(exc) or exc_type.__name__
            if issubclass(exc_type, redis.ResponseError) and not issubclass(exc_type, _OUTAGES):
                raise StoreDataError(self.name, self.url, reason) from exc
            raise StoreUnavailable(self.name, self.url, reason) from exc


class RedisStore(PerProcess):
    """Base of the Redis stores: the shared pool, the guarded call, health and pub/sub."""

    name = "redis"

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.cluster = cluster_url(url) is not None
        self._client: redis.Redis | RedisCluster | None = None
        self._scripts: dict[str, str] = {}  # Lua text -> its SHA, once loaded
        self.redis = Guarded(self, self.name, redact(url))

    @property
    def client(self) -> redis.Redis | RedisCluster:
        """The shared client, made on first use (a cluster's needs a node that answers: raises until one does)."""
        client = self._client
        if client is None:
            client = self._client = shared_client(self.url, self.timeout_s)
        return client

    def same_slot_commands(self, commands: list[tuple], slot_key: str) -> list:
        """Send ``commands`` (all their keys in ``slot_key``'s slot) in one write and read every reply.

        The request path's way to Redis: it skips redis-py's Pipeline machinery (measured at a
        third of the cost) and writes the packed commands on one pooled connection, of the one
        Redis or of the cluster node that holds the slot. An error reply raises (the connection is
        dropped, not half-read); a slot that moved refreshes the cluster's map and the call runs
        once more through a cluster pipeline, which follows redirections.
        """
        client = self.client
        if self.cluster:
            try:
                return self._packed(client.get_node_from_key(slot_key).redis_connection.connection_pool, commands)
            except (redis.exceptions.AskError, redis.exceptions.ConnectionError,
                    redis.exceptions.RedisClusterException):
                client.nodes_manager.initialize()
                pipe = client.pipeline()
                for command in commands:
                    pipe.execute_command(*command)
                return pipe.execute()
        return self._packed(client.connection_pool, commands)

    def command_groups(self, groups: list[tuple[list[tuple], str]]) -> list[list | StoreDataError]:
        """:meth:`same_slot_commands` for many groups at once: on one Redis one write and one read
        for all of them (the request path's batched reads); on a cluster, group by group (each
        group's keys share a slot; the groups do not). A group with an error reply about its data
        gets a StoreDataError in its place, the others their replies; an outage raises (call it
        inside ``with self.redis``)."""
        if self.cluster:
            out: list[list | StoreDataError] = []
            for commands, slot_key in groups:
                try:
                    with self.redis:
                        out.append(self.same_slot_commands(commands, slot_key))
                except StoreDataError as exc:
                    out.append(exc)
            return out
        return [StoreDataError(self.name, redact(self.url), str(replies)) if isinstance(replies, Exception)
                else replies for replies in self._exchange(self.client.connection_pool, [c for c, _ in groups])]

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """GET of each key: one MGET on one Redis; on a cluster, one MGET per slot (keys of many
        users spread over the slots), redis-py's ``mget_nonatomic``."""
        if self.cluster:
            return self.client.mget_nonatomic(keys)
        return self.client.mget(keys)

    def run_script(self, script: str, calls: list[tuple[list[str], list]]) -> list:
        """Run the Lua ``script`` once per ``(keys, args)`` in ``calls`` (each call's keys in one slot)
        and return the replies: one EVALSHA for one call, else one pipeline (a batch per cluster node).

        The script is loaded on first use (on every primary of a cluster) and again on the nodes
        that answer NOSCRIPT (restarted, failed over): only those calls run a second time.
        """
        r = self.client
        sha = self._scripts.get(script)
        if sha is None:
            sha = self._scripts[script] = r.script_load(script)
        replies = self._evalsha(r, sha, calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, redis.exceptions.NoScriptError)]
        if missing:
            r.script_load(script)
            for i, reply in zip(missing, self._evalsha(r, sha, [calls[i] for i in missing])):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    @staticmethod
    def _evalsha(r: redis.Redis | RedisCluster, sha: str, calls: list[tuple[list[str], list]]) -> list:
        if len(calls) == 1:
            keys, args = calls[0]
            try:
                return [r.evalsha(sha, len(keys), *keys, *args)]
            except redis.exceptions.NoScriptError as exc:
                return [exc]
        pipe = r.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, *args)
        return pipe.execute(raise_on_error=False)

    @classmethod
    def _packed(cls, pool: redis.ConnectionPool, commands: list[tuple]) -> list:
        [replies] = cls._exchange(pool, [commands])
        if isinstance(replies, Exception):
            raise replies
        return replies

    @staticmethod
    def _exchange(pool: redis.ConnectionPool, groups: list[list[tuple]]) -> list[list | redis.ResponseError]:
        """Every group's commands in one write on one pooled connection, then every reply: per group its
        replies, or the first error reply about its data (the rest read all the same, so the connection
        stays in step). An outage reply or a socket error raises, and the half-read connection is dropped."""
        conn = pool.get_connection()
        try:
            flat = [command for commands in groups for command in commands]
            conn.send_packed_command([resp(flat)] if _plain(flat) else conn.pack_commands(flat))
            out: list[list | redis.ResponseError] = []
            for commands in groups:
                replies, error = [], None
                for _ in commands:
                    try:
                        replies.append(conn.read_response())
                    except redis.ResponseError as exc:  # read whole: the next reply follows it
                        if isinstance(exc, _OUTAGES):
                            raise
                        error = error or exc
                out.append(replies if error is None else error)
            return out
        except BaseException:
            conn.disconnect()  # a half-read connection must not go back to the pool
            raise
        finally:
            pool.release(conn)

    @classmethod
    def cache_key(cls, settings: Settings) -> str:
        return settings.redis_url

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(settings.redis_url, settings.store_timeout_s)

    def ping(self) -> None:
        """Raise StoreUnavailable (naming the URL) unless Redis answers."""
        with self.redis as r:
            r.ping()

    def health(self) -> Health:
        def probe() -> dict[str, str]:
            with self.redis as r:
                r.ping()
                info = r.info("server")
                if not self.cluster:
                    return {"version": str(info.get("redis_version", "?"))}
                state = r.cluster_info()
                masters = len(r.get_primaries())
            if state.get("cluster_state") != "ok":
                raise StoreUnavailable(self.name, redact(self.url), f"cluster_state is {state.get('cluster_state')}")
            return {"version": str(info.get("redis_version", "?")), "cluster": f"ok, {masters} masters"}

        return timed_health(self.name, self.url, probe)

    def publish(self, topic: str, message: str) -> None:
        """Announce a change on ``events:{topic}`` to every process that watches it."""
        with self.redis as r:
            r.publish(Keys.channel(topic), message)

    def subscribe(self, *topics: str) -> Iterator[dict]:
        """Messages on the given channels, forever (until the connection fails: StoreUnavailable)."""
        with self.redis:
            # A connection of its own without a read timeout: a quiet channel is not an error. On a
            # cluster, a ClusterPubSub on one node: a PUBLISH on any node reaches every node.
            listener = connect(self.url, self.timeout_s, read_timeout=False, socket_keepalive=True)
            pubsub = listener.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(*(Keys.channel(t) for t in topics))
                yield from pubsub.listen()
            finally:
                pubsub.close()
                listener.close()
