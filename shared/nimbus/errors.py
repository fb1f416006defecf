"""The errors Nimbus raises on purpose: each carries a one-line message meant for a person.

The CLI prints them without a traceback; HTTP functions turn them into 4xx/5xx answers, by
the one table in ``nimbus.api.common`` (:data:`HTTP_STATUS`): Unprocessable 422, InvalidInput 400, NotFound 404,
Conflict 409, StoreUnavailable 503, anything else 500.
"""

from __future__ import annotations


class NimbusError(Exception):
    """Base of every error whose message is fit to show a user as it is."""


class ConfigError(NimbusError):
    """A setting or a project file (serverless.yml, localstack/resources.json) is wrong."""


class InvalidInput(NimbusError, ValueError):
    """A request names something wrong (an unknown category, a bad parameter): the caller's fault."""


class Unprocessable(InvalidInput):
    """A well-formed request whose content does not fit what it addresses (records against a model's
    signature): HTTP 422. ``errors`` lists each problem as FastAPI does: ``{"loc", "msg", "type"}``."""

    def __init__(self, errors: list[dict]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors))


class NotFound(NimbusError):
    """A requested thing (a model version, a job) does not exist."""


class Conflict(NimbusError):
    """The thing exists, but its state forbids the action (an experiment already running, an alias
    already at that version)."""


class EventError(InvalidInput):
    """A cloud event does not have the shape its source promises."""


class StoreUnavailable(NimbusError):
    """A backend (Redis, MongoDB, S3, MLflow) cannot be reached at its URL."""

    def __init__(self, store: str, url: str, reason: str, consequence: str | None = None) -> None:
        self.store, self.url, self.reason = store, url, reason
        self.consequence = consequence  # what a caller may be told beyond the store's name (never its address)
        super().__init__(f"{store} at {url} is unreachable: {reason}" + (f"; {consequence}" if consequence else ""))


class StoreDataError(StoreUnavailable):
    """A backend answered, but refused the command on the data it holds (Redis WRONGTYPE, a
    script error): a data problem under one key, not an outage. A subclass of StoreUnavailable
    so every caller that handles an unreachable store still handles it; the recommendation
    request path tells the two apart (a data error must not open its circuit breaker)."""

    def __init__(self, store: str, url: str, reason: str, consequence: str | None = None) -> None:
        super().__init__(store, url, reason, consequence)
        self.args = (f"{store} at {url} refused a command on the data it holds: {reason}"
                     + (f"; {consequence}" if consequence else ""),)

    def __str__(self) -> str:
        return self.args[0]


class LocalStackError(NimbusError):
    """The local stack could not start or stop a service (port taken, binary missing...)."""
