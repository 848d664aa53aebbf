"""The admin web UI's sign-in sessions: in this process's memory, bounded, short-lived.

A session is made only by signing in with an admin credential (`ui.py`); the browser
then holds just its random id in an HttpOnly cookie, never the credential. Each
session has its own CSRF token, which every state-changing call must echo in a
header (`auth.py` checks it): a cookie alone is what a forged cross-site request
would carry.

Memory, not a shared store: a session ends with the process, so restarting the
gateway (or changing its admin tokens, which needs a restart) signs everyone out.
The store is bounded: past `max_sessions` the least recently used session goes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

COOKIE_NAME = "vgw_admin_session"
CSRF_HEADER = "x-csrf-token"


@dataclass(slots=True)
class Session:
    identity: str
    csrf_token: str
    created: float
    last_seen: float

    def csrf_matches(self, sent: bytes | None) -> bool:
        """Whether SENT is this session's CSRF token, compared in constant time."""
        if sent is None:
            return False
        return hmac.compare_digest(sent, self.csrf_token.encode("ascii"))


class SessionStore:
    """Sessions by id. An id is looked up by its SHA-256, so the store's own dict
    never compares a guessed id against a real one character by character."""

    def __init__(
        self,
        *,
        idle_seconds: float,
        max_age_seconds: float,
        max_sessions: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if idle_seconds <= 0 or max_age_seconds <= 0 or max_sessions < 1:
            raise ValueError("session lifetimes and the store's size must be positive")
        self.idle_seconds = idle_seconds
        self.max_age_seconds = max_age_seconds
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, identity: str) -> tuple[str, Session]:
        """A new session for IDENTITY: its id (for the cookie only) and the session."""
        now = self._clock()
        self._expire(now)
        session_id = secrets.token_urlsafe(32)
        session = Session(identity, secrets.token_urlsafe(32), created=now, last_seen=now)
        self._sessions[_digest(session_id)] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of SESSION_ID, its idle clock restarted; None when unknown,
        idle too long or too old (then it is gone for good)."""
        if not session_id:
            return None
        digest = _digest(session_id)
        session = self._sessions.get(digest)
        if session is None:
            return None
        now = self._clock()
        if self._expired(session, now):
            del self._sessions[digest]
            return None
        session.last_seen = now
        self._sessions.move_to_end(digest)
        return session

    def delete(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(_digest(session_id), None)

    def _expired(self, session: Session, now: float) -> bool:
        return (
            now - session.last_seen > self.idle_seconds
            or now - session.created > self.max_age_seconds
        )

    def _expire(self, now: float) -> None:
        # Least recently used first: stop at the first one still idle-fresh.
        while self._sessions:
            digest, oldest = next(iter(self._sessions.items()))
            if now - oldest.last_seen <= self.idle_seconds:
                break
            del self._sessions[digest]


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).digest()


def cookie_value(headers: list[tuple[bytes, bytes]], name: str = COOKIE_NAME) -> str | None:
    """NAME's value in the request's Cookie headers; None when absent or given twice
    (two values are ambiguous, as with two Authorization headers)."""
    found: list[str] = []
    for key, value in headers:
        if key.lower() != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            cookie, sep, content = part.strip().partition("=")
            if sep and cookie == name:
                found.append(content.strip())
    return found[0] if len(found) == 1 else None
