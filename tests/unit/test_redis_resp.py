"""The request path's hand-packed Redis write is byte for byte what redis-py would send."""

from __future__ import annotations

import pytest
import redis

from nimbus.stores.redis.base import resp
from nimbus.stores.redis.keys import Keys

COMMANDS = [
    [("GET", Keys.fs_user("20261207T120000-abc123", "u42")), ("HGETALL", Keys.rt_user("u42")),
     ("LRANGE", Keys.rt_recent("u42"), 0, 19)],
    [("GET", "fs:{u:été-ü}:x"), ("LRANGE", "k", -1, 123456789012)],  # non-ASCII key, negative and large ints
    [("SET", b"raw\r\nbytes", b"\x00\xff"), ("PING",)],
]


@pytest.mark.parametrize("commands", COMMANDS)
def test_resp_is_what_redis_py_packs(commands: list[tuple]) -> None:
    assert resp(commands) == b"".join(redis.Connection().pack_commands(commands))
