"""API keys: constant-time checks, and the owner id a session is bound to.

A key is never stored in a session, a log line or a response; sessions carry ``owner_id(key)``,
a truncated SHA-256 of it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping


def owner_id(key: str) -> str:
    """A stable, non-reversible id for the holder of ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()[:24]


class KeyRing:
    """The configured keys, checked in constant time."""

    def __init__(self, keys: Iterable[str]):
        # Digests have one fixed length, so compare_digest's time depends on neither the
        # candidate's length nor how many leading bytes match.
        self._digests = tuple(hashlib.sha256(k.encode()).digest() for k in keys)

    def check(self, candidate: str | None) -> str | None:
        """The owner id when ``candidate`` is a configured key, else None."""
        if not candidate:
            return None
        digest = hashlib.sha256(candidate.encode()).digest()
        match = False
        for known in self._digests:  # no early exit: every key is compared
            match |= hmac.compare_digest(digest, known)
        return owner_id(candidate) if match else None


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The key of ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (lower-cased names)."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return headers.get("x-api-key", "").strip() or None
