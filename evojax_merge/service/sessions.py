"""Sessions: per-key, bounded in number, dropped when idle.

A session is visible only to the key that made it; to any other key it does not exist (the
routes answer 404, never 403, so a session id cannot be probed). A slot is reserved before the
session is built, so concurrent creates cannot overshoot ``max_per_owner``.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any


class SessionNotFound(KeyError):
    """No such session for this key (absent, expired, deleted, or another key's)."""


class SessionLimitError(Exception):
    """The key already holds its maximum number of sessions."""


@dataclasses.dataclass
class Session:
    """One user's binding of a pool subset and a validation set to a compiled evaluator."""

    id: str
    owner: str
    pool_id: str
    adapters: tuple[str, ...]
    stack: Any  # LoraStack of the chosen adapters
    evaluator: Any  # search.fitness.MergeEvaluator
    prune: str
    validation: dict
    seq_len: int
    created_at: float = dataclasses.field(default_factory=time.time)
    last_used: float = dataclasses.field(default_factory=time.monotonic)
    evaluations: int = 0  # candidates evaluated so far

    @property
    def num_adapters(self) -> int:
        return len(self.adapters)


class SessionStore:
    """Thread-safe map ``session id -> Session`` with per-owner limits and an idle TTL."""

    def __init__(self, max_per_owner: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.max_per_owner = max_per_owner
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._pending: dict[str, str] = {}  # reserved id -> owner, while the session is built

    def reserve(self, owner: str) -> str:
        """A fresh session id, counted against ``owner``'s limit until committed or released."""
        self.expire()
        with self._lock:
            held = sum(s.owner == owner for s in self._sessions.values())
            held += sum(o == owner for o in self._pending.values())
            if held >= self.max_per_owner:
                raise SessionLimitError(
                    f"this key holds {held} sessions, the limit is {self.max_per_owner}: delete one first"
                )
            sid = secrets.token_urlsafe(18)
            self._pending[sid] = owner
            return sid

    def commit(self, session: Session) -> None:
        with self._lock:
            if self._pending.pop(session.id, None) != session.owner:
                raise SessionNotFound(session.id)
            session.last_used = self._clock()
            self._sessions[session.id] = session

    def release(self, sid: str) -> None:
        with self._lock:
            self._pending.pop(sid, None)

    def get(self, owner: str, sid: str) -> Session:
        """The session ``sid`` of ``owner``; SessionNotFound when absent or another key's."""
        now = self._clock()
        with self._lock:
            s = self._sessions.get(sid)
            if s is None or s.owner != owner:
                raise SessionNotFound(sid)
            if now - s.last_used > self.ttl_s:  # expired but not yet swept
                del self._sessions[sid]
                raise SessionNotFound(sid)
            s.last_used = now
            return s

    def remove(self, owner: str, sid: str) -> Session:
        with self._lock:
            s = self._sessions.get(sid)
            if s is None or s.owner != owner:
                raise SessionNotFound(sid)
            return self._sessions.pop(sid)

    def record_evaluations(self, session: Session, count: int) -> None:
        """Count ``count`` evaluated candidates (atomic: a session may serve concurrent requests)."""
        with self._lock:
            session.evaluations += count

    def owned(self, owner: str) -> list[Session]:
        with self._lock:
            return [s for s in self._sessions.values() if s.owner == owner]

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def expire(self) -> list[str]:
        """Drop sessions idle for longer than the TTL; their ids."""
        now = self._clock()
        with self._lock:
            stale = [sid for sid, s in self._sessions.items() if now - s.last_used > self.ttl_s]
            for sid in stale:
                del self._sessions[sid]
            return stale
