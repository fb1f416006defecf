"""API keys as stored (name, scopes, SHA-256), how a presented key is identified, when a process must
refuse to start, and the cache that makes a rotated key take effect."""

from __future__ import annotations

import hashlib

import pytest
from pydantic import SecretStr

from nimbus.apikeys import LOCAL_KEY, ApiKey, Cached, KeyRing, deployment_problems, is_loopback_url, parse_entries
from nimbus.config import Settings
from nimbus.errors import ConfigError
from nimbus.security import check_deployable


def test_a_new_key_is_random_and_only_its_digest_is_stored() -> None:
    key, stored = ApiKey.create("ops", ["admin"])
    other, _ = ApiKey.create("ops", ["admin"])
    assert key != other and key.startswith("nk_") and len(key) > 40
    assert stored.sha256 == hashlib.sha256(key.encode()).digest() and key not in stored.entry
    assert ApiKey.parse(stored.entry) == stored


@pytest.mark.parametrize(("entry", "message"), [
    ("just-a-key", "(unnamed)"),
    ("ops:admin:abc", "'ops' is not name:scope"),
    (f"ops:root:{'a' * 64}", "unknown scope(s) root"),
    (f"bad name:admin:{'a' * 64}", "must be 1-64 of"),
])
def test_a_bad_entry_is_a_clear_error_that_echoes_no_secret(entry: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ApiKey.parse(entry)
    assert message in str(caught.value)
    assert "just-a-key" not in str(caught.value) and "abc" not in str(caught.value)


def test_entries_parse_from_commas_or_lines_and_names_are_unique() -> None:
    a, b = "a" * 64, "b" * 64
    keys = parse_entries(f"ops:admin:{a}\nbot:events+read:{b}, ")
    assert [(k.name, k.allows("events"), k.allows("admin")) for k in keys] == [("ops", True, True),
                                                                              ("bot", True, False)]
    with pytest.raises(ConfigError, match="unique"):
        parse_entries(f"ops:admin:{a},ops:read:{b}")


def test_the_ring_identifies_by_hash_any_bytes_and_nothing_for_a_near_miss() -> None:
    key, stored = ApiKey.create("ops", ["read"])
    ring = KeyRing([stored, ApiKey.create("x", ["events"])[1]])
    assert ring.identify(key) == stored and ring.identify(key.encode()) == stored
    for wrong in (None, "", key[:-1], key + "x", "é".encode(), b"\xff\xfe"):
        assert ring.identify(wrong) is None


def test_only_the_local_stack_may_run_on_the_local_key_or_a_default_secret() -> None:
    local_key = ApiKey.parse(f"local:admin:{hashlib.sha256(LOCAL_KEY.encode()).hexdigest()}")
    real = ApiKey.create("ops", ["admin"])[1]
    assert deployment_problems([local_key], local=True, secrets_in_use={"request_secret": True}) == []
    assert deployment_problems([real], local=False, secrets_in_use={"request_secret": False}) == []
    assert "no API keys" in deployment_problems([], local=False, secrets_in_use={})[0]
    assert "local key" in deployment_problems([real, local_key], local=False, secrets_in_use={})[0]
    assert deployment_problems([real], local=False, secrets_in_use={"request_secret": True}) == [
        "NIMBUS_REQUEST_SECRET still holds its local default"]


def test_check_deployable_reads_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NIMBUS_API_KEYS", "NIMBUS_REQUEST_SECRET", "NIMBUS_AWS_ENDPOINT_URL", "NIMBUS_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    check_deployable(Settings(_env_file=None))  # the defaults: the local stack
    remote = Settings(_env_file=None, redis_url="rediss://cache.internal:6380/0")
    with pytest.raises(ConfigError, match="refusing to start off the local stack: the local key"):
        check_deployable(remote)
    deployable = remote.model_copy(update={"api_keys": [ApiKey.create("ops", ["admin"])[1]],
                                           "request_secret": SecretStr("a-deployment-secret")})
    check_deployable(deployable)
    with pytest.raises(ConfigError, match="NIMBUS_REQUEST_SECRET still holds its local default"):
        check_deployable(deployable.model_copy(update={"request_secret": SecretStr("")}))


@pytest.mark.parametrize(("url", "loopback"), [
    ("http://127.0.0.1:4566", True), ("redis://localhost:6379/0", True), ("http://[::1]:80", True),
    ("redis://127.0.0.2:1/0", True), ("http://10.0.0.1", False), ("rediss://redis.internal:6380", False),
    (None, False), ("", False)])
def test_loopback_urls(url: str | None, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback


def test_cached_keys_are_reloaded_after_their_time_to_live() -> None:
    now, loads = [0.0], []
    cached = Cached(lambda: loads.append(now[0]) or [], ttl_s=300, clock=lambda: now[0])
    cached.get()
    now[0] = 299.0
    cached.get()
    assert loads == [0.0]
    now[0] = 300.0
    cached.get()
    assert loads == [0.0, 300.0]
