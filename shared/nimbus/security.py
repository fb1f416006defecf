"""API keys and secrets applied to a process's settings: the keys it accepts (from the settings and
AWS SSM / Secrets Manager, re-read for rotation), the request-signing secret, and the refusal to serve
off the local stack on local defaults. The keys themselves: :mod:`nimbus.apikeys`."""

from __future__ import annotations

import threading

from nimbus.apikeys import ApiKey, Cached, KeyRing, deployment_problems, parse_entries
from nimbus.config import Settings
from nimbus.errors import ConfigError

_lock = threading.Lock()  # guards both per-process caches below
_rings: dict[tuple, Cached] = {}


def keyring(settings: Settings) -> KeyRing:
    """The keys ``settings`` accept: ``api_keys`` plus those at ``api_keys_source`` (re-read every
    ``api_keys_cache_s``), one cache per process and configuration."""
    ident = (tuple(k.entry for k in settings.api_keys), settings.api_keys_source, settings.aws_endpoint_url,
             settings.aws_region, settings.api_keys_cache_s)
    with _lock:
        cached = _rings.get(ident)
        if cached is None:
            def load() -> list[ApiKey]:
                if not settings.api_keys_source:
                    return list(settings.api_keys)
                from nimbus.stores.secrets import read_secret

                return list(settings.api_keys) + parse_entries(read_secret(settings, settings.api_keys_source))
            cached = _rings[ident] = Cached(load, settings.api_keys_cache_s)
    return KeyRing(cached.get())


_secrets: dict[tuple, bytes] = {}


def request_secret(settings: Settings) -> bytes:
    """The key that signs request ids: from ``request_secret_source`` (read once per process) or the setting."""
    if not settings.request_secret_source:
        return settings.request_secret.get_secret_value().encode()
    ident = (settings.request_secret_source, settings.aws_endpoint_url, settings.aws_region)
    with _lock:
        if ident not in _secrets:
            from nimbus.stores.secrets import read_secret

            _secrets[ident] = read_secret(settings, settings.request_secret_source).strip().encode()
        return _secrets[ident]


def check_deployable(settings: Settings) -> None:
    """Raise ConfigError (one line) when this process must not serve: off the local stack with no keys,
    the local key, or the request secret still at its local default (or empty) and no source for it."""
    local_default = type(settings).model_fields["request_secret"].default.get_secret_value()
    default_secret = (not settings.request_secret_source
                      and settings.request_secret.get_secret_value() in (local_default, ""))
    problems = deployment_problems(keyring(settings).keys, local=settings.local_stack,
                                   secrets_in_use={"request_secret": default_secret})
    if problems:
        raise ConfigError("refusing to start off the local stack: " + "; ".join(problems))
