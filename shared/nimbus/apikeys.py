"""API keys: named, scoped, stored hashed; and the rule that a deployment never runs on the local key.

This module holds the keys themselves (and imports no settings: the settings parse keys with it);
:mod:`nimbus.security` applies them to a process's settings.

A key is a random string handed to one caller (``nimbus keys new NAME --scope ...`` prints it
once). Nimbus stores only its SHA-256 with the key's name and scopes — in ``NIMBUS_API_KEYS``
(``name:scope+scope:sha256hex``, comma-separated; locally the ``.env``) and/or in an AWS SSM
parameter or Secrets Manager secret named by ``NIMBUS_API_KEYS_SOURCE``. A presented key is
hashed and compared to every stored digest as bytes, in constant time.

SHA-256 (not a slow password hash) is the right tool here: keys are 32 random bytes, so
there is nothing to guess; a slow hash would only slow every request.

Scopes: ``admin`` (everything, incl. promotions and experiments), ``automl`` (submit and read
AutoML jobs), ``events`` (post user interactions), ``read`` (dashboard data, metrics, read-only
GETs of the admin APIs). ``admin`` implies every other scope.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Literal
from urllib.parse import urlsplit

from nimbus.errors import ConfigError

Scope = Literal["admin", "automl", "events", "read"]
SCOPES: tuple[Scope, ...] = ("admin", "automl", "events", "read")

# The local stack's key: printed in the README, accepted only while every backend is on this machine.
LOCAL_KEY = "nimbus-local-key"
LOCAL_ENTRY = f"local:admin:{hashlib.sha256(LOCAL_KEY.encode()).hexdigest()}"
KEY_PREFIX = "nk_"

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ENTRY = re.compile(r"^(?P<name>[^:]+):(?P<scopes>[^:]+):(?:sha256:)?(?P<digest>[0-9a-fA-F]{64})$")


def digest(key: str | bytes) -> bytes:
    """SHA-256 of a key as presented (text is taken as UTF-8; an HTTP header arrives as bytes)."""
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


def grants(scopes: frozenset[str], scope: str) -> bool:
    """Whether a key with ``scopes`` may do what needs ``scope`` (``admin`` implies every scope)."""
    return "admin" in scopes or scope in scopes


@dataclass(frozen=True)
class ApiKey:
    """One stored key: who holds it, what it may do, and its SHA-256 (never the key)."""

    name: str
    scopes: frozenset[str]
    sha256: bytes

    def allows(self, scope: str) -> bool:
        return grants(self.scopes, scope)

    @property
    def entry(self) -> str:
        """The key as ``NIMBUS_API_KEYS`` holds it."""
        return f"{self.name}:{'+'.join(sorted(self.scopes))}:{self.sha256.hex()}"

    @classmethod
    def parse(cls, entry: str) -> ApiKey:
        """``name:scope+scope:sha256hex`` -> ApiKey; a clear ConfigError naming the entry's name otherwise."""
        match = _ENTRY.fullmatch(entry.strip())
        if match is None:
            shown = entry.split(":", 1)[0][:64] if ":" in entry else "(unnamed)"  # never echo a digest or key
            raise ConfigError(f"API key entry {shown!r} is not name:scope+scope:sha256hex "
                              "(make one with `nimbus keys new NAME --scope SCOPE`)")
        name, scopes = match["name"], frozenset(match["scopes"].split("+"))
        if not _NAME.fullmatch(name):
            raise ConfigError(f"API key name {name[:64]!r} must be 1-64 of A-Z a-z 0-9 _ . -")
        unknown = scopes - set(SCOPES)
        if unknown:
            raise ConfigError(f"API key {name!r}: unknown scope(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(SCOPES)}")
        return cls(name, scopes, bytes.fromhex(match["digest"]))

    @classmethod
    def create(cls, name: str, scopes: Iterable[str]) -> tuple[str, ApiKey]:
        """A new random key (shown once) and its stored form."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        stored = cls.parse(f"{name}:{'+'.join(sorted(set(scopes)))}:{digest(key).hex()}")
        return key, stored


def parse_entries(text: str) -> list[ApiKey]:
    """Entries separated by commas or newlines (an SSM parameter may hold one per line)."""
    keys = [ApiKey.parse(part) for part in re.split(r"[,\n]", text) if part.strip()]
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise ConfigError(f"API key names must be unique; repeated: {sorted({n for n in names if names.count(n) > 1})}")
    return keys


class KeyRing:
    """The keys a process accepts. ``identify`` hashes the presented key once and compares it
    to every digest (all of them, so the time taken does not say which one matched)."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self.keys = tuple(keys)

    def identify(self, presented: bytes | str | None) -> ApiKey | None:
        if not presented:
            return None
        wanted, found = digest(presented), None
        for key in self.keys:
            if hmac.compare_digest(wanted, key.sha256):
                found = key
        return found


LOCAL_DIGEST = digest(LOCAL_KEY)


def is_loopback_url(url: str | None) -> bool:
    """True for a URL whose host is this machine (127.0.0.0/8, ::1, localhost)."""
    if not url:
        return False
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def deployment_problems(keys: Iterable[ApiKey], *, local: bool, secrets_in_use: dict[str, bool]) -> list[str]:
    """Why a process must not serve: off the local stack, no keys, the local key, or a local-default
    secret (``secrets_in_use``: setting name -> True while it still holds its local default)."""
    if local:
        return []
    keys = list(keys)
    problems = []
    if not keys:
        problems.append("no API keys are configured (NIMBUS_API_KEYS or NIMBUS_API_KEYS_SOURCE)")
    elif any(hmac.compare_digest(k.sha256, LOCAL_DIGEST) for k in keys):
        problems.append("the local key (nimbus-local-key) is configured; make real ones with `nimbus keys new`")
    problems += [f"NIMBUS_{name.upper()} still holds its local default" for name, default in secrets_in_use.items()
                 if default]
    return problems


class Cached:
    """A value fetched by ``load`` and kept ``ttl_s`` seconds (so a rotated key takes effect without a
    redeploy); ``clock`` is injectable for tests."""

    def __init__(self, load: Callable[[], list[ApiKey]], ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._load, self.ttl_s, self._clock = load, ttl_s, clock
        self._lock = threading.Lock()
        self._value: list[ApiKey] | None = None
        self._at = 0.0

    def get(self) -> list[ApiKey]:
        with self._lock:
            if self._value is None or self._clock() - self._at >= self.ttl_s:
                self._value, self._at = self._load(), self._clock()
            return self._value

