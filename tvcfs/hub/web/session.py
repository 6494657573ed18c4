"""Web sessions of the hub (docs/hub.md, "Web pages"): a person logs in with a hub
token through the login form; the browser then holds only a random session id in an
``HttpOnly``, ``SameSite=Lax`` cookie. The server keeps, per session id, the user and
the sha-256 of the token the session was opened with — never the token — so
revoking the token (``tvcfs hub user revoke``) ends the session at once. Sessions
live in the hub process (a restart logs everyone out) and expire after
:data:`SESSION_TTL` seconds."""

from __future__ import annotations

import secrets
import threading
import time

from .. import state as _state

COOKIE = "tvcfs_session"
SESSION_TTL = 7 * 24 * 3600  # seconds
MAX_SESSIONS = 100_000


class Sessions:
    """Session ids → ``(user, token sha-256, expiry)``, checked against the hub's
    state (``HubState``) on every use. Thread-safe."""

    def __init__(self, state):
        self.state = state
        self._d: dict = {}
        self._lock = threading.Lock()

    def open(self, token: str) -> tuple | None:
        """``(session id, user)`` for a live ``token``, else ``None``."""
        user = self.state.user_for_token(token)
        if user is None:
            return None
        sid = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            if len(self._d) >= MAX_SESSIONS:  # drop expired ones, then the oldest
                for k in [k for k, v in self._d.items() if v[2] < now] or list(self._d)[:len(self._d) // 10]:
                    self._d.pop(k, None)
            self._d[sid] = (user, _state.token_hash(token), now + SESSION_TTL)
        return sid, user

    def user(self, sid: str | None) -> str | None:
        """The user of session ``sid`` if it is live and its token still is, else ``None``."""
        if not sid:
            return None
        with self._lock:
            rec = self._d.get(sid)
        if rec is None:
            return None
        user, h, expiry = rec
        if expiry < time.time() or self.state.user_for_hash(h) != user:
            self.close(sid)
            return None
        return user

    def close(self, sid: str | None) -> None:
        """End session ``sid`` (logout); unknown ids are ignored."""
        with self._lock:
            self._d.pop(sid, None)
