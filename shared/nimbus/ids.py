"""Ids that reach Redis keys, and the signed ``request_id`` of a recommendation answer.

Every user, item, event and request id Nimbus accepts matches :data:`ID_PATTERN`:
1 to 128 of ``A-Z a-z 0-9 _ . @ -``. None can hold ``:``, the key separator, so no id can
name another key (``u42:recent`` is refused, not read as user ``u42``'s recent list).

A ``request_id`` is issued by the recommender and signed: ``{nonce}.{signature}`` where
the nonce is 96 random bits (hex) and the signature the first 128 bits of
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

from nimbus.config import Settings

ID_MAX = 128
ID_CHARS = "A-Z a-z 0-9 _ . @ -"
ID_PATTERN = r"^[A-Za-z0-9_.@\-]{1,128}$"
_ID = re.compile(ID_PATTERN)

NONCE_BYTES, SIG_BYTES = 12, 16
REQUEST_ID_LEN = 2 * NONCE_BYTES + 1 + 2 * SIG_BYTES  # 57
_REQUEST_ID = re.compile(rf"^[0-9a-f]{{{2 * NONCE_BYTES}}}\.[0-9a-f]{{{2 * SIG_BYTES}}}$")


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

    def issue(self, user_id: str) -> str:
        """A new request id for an answer to ``user_id``."""
        nonce = os.urandom(NONCE_BYTES).hex()
        return f"{nonce}.{self._sign(nonce, user_id)}"

    def verify(self, request_id: object, user_id: str) -> bool:
        """True only for an id this server issued to ``user_id`` (constant-time comparison)."""
        if not isinstance(request_id, str) or _REQUEST_ID.fullmatch(request_id) is None:
            return False
        nonce, sig = request_id.split(".")
        return hmac.compare_digest(sig, self._sign(nonce, user_id))
