"""Console login: scrypt password hashes, signed expiring session cookies, CSRF tokens, a login rate limit.

Kept free of aiohttp so each piece is unit-tested on its own. Sessions are stateless: the cookie holds
``user|expires_ms|nonce`` and an HMAC-SHA256 over it with ``KAGOFLOW_CONSOLE_SESSION_SECRET``; a CSRF token is
an HMAC of the session cookie's nonce under a separate derived key, so it is bound to one session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass

DEFAULT_SECRET = "change-me-in-production"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64), the format ``KAGOFLOW_CONSOLE_USERS`` takes after ``name:``."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, maxmem=64 * 1024 * 1024, **_SCRYPT)
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches ``encoded``; a malformed hash never matches."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(want), maxmem=128 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def parse_users(entries: tuple[str, ...]) -> dict[str, str]:
    """``name:scrypt$...`` entries → {name: hash}; a bad entry raises ``ValueError`` naming it (not its hash)."""
    users: dict[str, str] = {}
    for entry in entries:
        name, sep, encoded = entry.partition(":")
        if not sep or not name or not encoded.startswith("scrypt$") or encoded.count("$") != 5:
            raise ValueError(f"KAGOFLOW_CONSOLE_USERS: entry for {name or '?'!r} is not name:scrypt$n$r$p$salt$hash")
        users[name] = encoded
    return users


@dataclass(frozen=True)
class Session:
    user: str
    expires_ms: int
    nonce: str


class SessionSigner:
    """Makes and checks session cookies and CSRF tokens."""

    def __init__(self, secret: str, *, lifetime_s: int) -> None:
        self._key = hashlib.sha256(b"session|" + secret.encode()).digest()
        self._csrf_key = hashlib.sha256(b"csrf|" + secret.encode()).digest()
        self.lifetime_s = lifetime_s

    def issue(self, user: str, *, now_ms: int | None = None) -> str:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        body = f"{user}|{now_ms + self.lifetime_s * 1000}|{secrets.token_urlsafe(12)}"
        return f"{body}|{self._sign(body)}"

    def check(self, cookie: str | None, *, now_ms: int | None = None) -> Session | None:
        """The session of a valid, unexpired cookie; else None."""
        if not cookie or cookie.count("|") != 3:
            return None
        body, _, signature = cookie.rpartition("|")
        if not hmac.compare_digest(signature, self._sign(body)):
            return None
        user, expires, nonce = body.split("|")
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        if not expires.isdigit() or int(expires) <= now_ms:
            return None
        return Session(user, int(expires), nonce)

    def csrf_token(self, session: Session) -> str:
        return hmac.new(self._csrf_key, session.nonce.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(session), token or "")

    def _sign(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()


class LoginLimiter:
    """At most ``attempts`` failed logins per ``window_s`` per client address and per user name."""

    def __init__(self, *, attempts: int = 5, window_s: float = 300.0) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}

    def blocked(self, *keys: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return any(len(self._recent(key, now)) >= self.attempts for key in keys)

    def failed(self, *keys: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for key in keys:
            self._recent(key, now).append(now)

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if len(self._failures) > 10_000:  # bound memory under a spray of names
            self._failures = {k: v for k, v in self._failures.items() if v}
        return times
