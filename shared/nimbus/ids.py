"""Ids that reach Redis keys, and the signed ``request_id`` of a recommendation answer.

Every user, item, event and request id Nimbus accepts matches :data:`ID_PATTERN`:
1 to 128 of ``A-Z a-z 0-9 _ . @ -``. None can hold ``:``, the key separator, so no id can
name another key (``u42:recent`` is refused, not read as user ``u42``'s recent list).

A ``request_id`` is issued by the recommender and signed: ``{nonce}.{signature}`` where
the nonce is the request's own id (:func:`request_id_for`: the caller's ``X-Request-Id``,
API Gateway's request id, else 96 random bits in hex) and the signature the first 128 bits of
HMAC-SHA256(``request_secret``, ``v1|{nonce}|{user_id}``) (hex). An id that does not
verify for the event's user is refused before any Redis key is built from it; one that
does is then joined to the server's own record of that answer (its items and time).

This module imports nothing of Nimbus but the settings: stores and domain code both use it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from contextvars import ContextVar

from nimbus.config import Settings

ID_MAX = 128
ID_CHARS = "A-Z a-z 0-9 _ . @ -"
ID_PATTERN = r"^[A-Za-z0-9_.@\-]{1,128}$"
_ID = re.compile(ID_PATTERN)

NONCE_BYTES, SIG_BYTES = 12, 16
REQUEST_ID_LEN = 2 * NONCE_BYTES + 1 + 2 * SIG_BYTES  # 57
# A request's own id (X-Request-Id, API Gateway's requestId): 8-64 of A-Z a-z 0-9 _ -. No "." (it
# separates the signature), nothing a log line, a header or a Redis key would need to escape.
REQUEST_ID_MIN, REQUEST_ID_MAX = 8, 64
_NONCE = re.compile(rf"^[A-Za-z0-9_\-]{{{REQUEST_ID_MIN},{REQUEST_ID_MAX}}}$")
_REQUEST_ID = re.compile(rf"^[A-Za-z0-9_\-]{{{REQUEST_ID_MIN},{REQUEST_ID_MAX}}}\.[0-9a-f]{{{2 * SIG_BYTES}}}$")
# The id of the request being served; set by the HTTP layer, read by :meth:`RequestSigner.issue`.
current_request_id: ContextVar[str | None] = ContextVar("nimbus_request_id", default=None)


def new_request_id() -> str:
    """A fresh request id: 96 random bits, hex."""
    return os.urandom(NONCE_BYTES).hex()


def is_request_id(value: object) -> bool:
    """True for a usable request id (8-64 of ``A-Z a-z 0-9 _ -``)."""
    return isinstance(value, str) and _NONCE.fullmatch(value) is not None


def request_id_for(header: str | None = None, gateway_id: str | None = None) -> str:
    """The id of one request: the caller's ``X-Request-Id`` when it is a usable id, else API
    Gateway's ``requestContext.requestId`` (its base64 padding dropped), else a new one. A bad
    header is replaced, never refused: the id is for correlation, not for authorisation."""
    if is_request_id(header):
        return header  # type: ignore[return-value]
    if isinstance(gateway_id, str) and is_request_id(gateway_id.rstrip("=")):
        return gateway_id.rstrip("=")
    return new_request_id()


def is_id(value: object) -> bool:
    """True when ``value`` is a string in the id character set (1..128 of ``ID_CHARS``)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


class RequestSigner:
    """Issues and verifies signed request ids with one server secret."""

    def __init__(self, secret: str | bytes) -> None:
        key = secret.encode() if isinstance(secret, str) else secret
        if not key:
            raise ValueError("the request secret is empty")
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    @classmethod
    def for_settings(cls, settings: Settings) -> RequestSigner:
        from nimbus.security import request_secret

        return cls(request_secret(settings))  # the setting, or the secret at request_secret_source

    def _sign(self, nonce: str, user_id: str) -> str:
        mac = self._mac.copy()
        mac.update(f"v1|{nonce}|{user_id}".encode())
        return mac.hexdigest()[:2 * SIG_BYTES]

    def issue(self, user_id: str, nonce: str | None = None) -> str:
        """The request id of an answer to ``user_id``: the current request's id (or ``nonce``), signed."""
        nonce = nonce or current_request_id.get()
        if not is_request_id(nonce):
            nonce = new_request_id()
        return f"{nonce}.{self._sign(nonce, user_id)}"

    def verify(self, request_id: object, user_id: str) -> bool:
        """True only for an id this server issued to ``user_id`` (constant-time comparison)."""
        if not isinstance(request_id, str) or _REQUEST_ID.fullmatch(request_id) is None:
            return False
        nonce, sig = request_id.split(".")
        return hmac.compare_digest(sig, self._sign(nonce, user_id))
