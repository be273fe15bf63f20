"""Who may call the service: API tokens with scopes, the page's session cookie, CSRF, the failed-auth limit.

A token is 256 random bits (``dps_`` + 43 URL-safe characters), shown once by
``deployer token add`` and stored only as its SHA-256 in the tokens file
(0600, outside the repository). A slow password hash buys nothing here: the
token is not guessable (2**256), so the digest only has to be one-way; a
plain SHA-256 lets every request be checked in microseconds.

Scopes: ``read`` (status, history, plan, jobs, events), ``deploy`` (deploy,
rollback), ``lock`` (take and lift locks), ``admin`` (everything). A request
proves who it is with ``Authorization: Bearer TOKEN`` or with the session
cookie the page's sign-in sets (HttpOnly, SameSite=Strict, Secure under TLS);
a cookie-authenticated request that changes something must also carry the
session's CSRF token (the ``X-CSRF-Token`` header, or the form field pages
pass to :func:`check_csrf`) and, when the browser sends one, an ``Origin``
naming this host.

Failed attempts are counted per client address: after ``LIMIT`` failures in
``WINDOW`` seconds that address gets 429 (with ``Retry-After``) for every
authenticated request, valid token or not, until the window has passed.

For pages (serve-page): ``require(request, scope)`` -> :class:`Identity` or
ApiError 401/403; ``csrf_token(request)``; ``check_csrf(request, value)``;
``sign_in(request, token)`` -> Session, ``set_session_cookie(response, request, session)``,
``sign_out(request, response)``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from deployer.errors import ApiError, TokenFileError, TokenNameError
from deployer.files import atomic_write

SCOPES = ("read", "deploy", "lock", "admin")
TOKEN_PREFIX = "dps_"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SESSION_COOKIE = "deployer_session"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL = 8 * 3600.0
LIMIT = 10  # failed attempts per address ...
WINDOW = 60.0  # ... within this many seconds, then 429
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def default_tokens_path(environ: dict[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/deployer/tokens.json`` (``~/.config/deployer/tokens.json``)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "deployer" / "tokens.json"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def parse_scopes(text: str | Iterable[str]) -> tuple[str, ...]:
    """``"read,deploy"`` -> ("read", "deploy"), in SCOPES order; an unknown or empty scope is TokenNameError."""
    words = [w.strip() for w in (text.split(",") if isinstance(text, str) else text)]
    if not words or any(not w for w in words):
        raise TokenNameError(f"--scope: give one or more of {', '.join(SCOPES)}, separated by commas")
    unknown = [w for w in words if w not in SCOPES]
    if unknown:
        raise TokenNameError(f"--scope: unknown scope {unknown[0]!r}: the scopes are {', '.join(SCOPES)}")
    return tuple(s for s in SCOPES if s in words)


@dataclass(frozen=True)
class Identity:
    """Who a request is: the token's name, its scopes, and how it came (``token`` or ``session``)."""

    name: str
    scopes: tuple[str, ...]
    via: str = "token"

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    @property
    def author(self) -> str:
        """The git author of what this identity commits: the token's name."""
        return f"{self.name} <{re.sub(r'[^A-Za-z0-9._-]', '-', self.name)}@deployer-serve>"


@dataclass
class TokenEntry:
    name: str
    sha256: str
    scopes: tuple[str, ...]
    created: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "scopes": list(self.scopes), "created": self.created}


class TokenStore:
    """The tokens file: read (again whenever it changed on disk), add, remove, verify."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[float, int, int] | None = None
        self._entries: list[TokenEntry] = []

    # -- the file ---------------------------------------------------------------------

    def _read(self) -> list[TokenEntry]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._entries = None, []
            return []
        except OSError as exc:
            raise TokenFileError(f"{self.path}: cannot read the tokens file: {exc.strerror}") from None
        stamp = (st.st_mtime, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return self._entries
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise TokenFileError(f"{self.path}: the tokens file is readable or writable by others (mode "
                                 f"{stat.S_IMODE(st.st_mode):04o}): chmod 600 it")
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            entries = [TokenEntry(str(e["name"]), str(e["sha256"]), parse_scopes(e["scopes"]), str(e.get("created", "")))
                       for e in data["tokens"]]
        except OSError as exc:
            raise TokenFileError(f"{self.path}: cannot read the tokens file: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError, TokenNameError) as exc:
            raise TokenFileError(f"{self.path}: not a tokens file written by 'deployer token add' ({exc})") from None
        self._stamp, self._entries = stamp, entries
        return entries

    def _write(self, entries: list[TokenEntry]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = {"version": 1, "tokens": [e.to_json() for e in entries]}
        try:
            atomic_write(self.path, (json.dumps(data, indent=2) + "\n").encode(), mode=0o600)
            os.chmod(self.path, 0o600)
        except OSError as exc:
            raise TokenFileError(f"{self.path}: cannot write the tokens file: {exc.strerror}") from None
        self._stamp = None

    def entries(self) -> list[TokenEntry]:
        with self._lock:
            return list(self._read())

    def add(self, name: str, scopes: str | Iterable[str]) -> str:
        """A new token named ``name`` with ``scopes``; returns the token (the only time it exists in clear)."""
        if not NAME_RE.match(name or ""):
            raise TokenNameError(f"token name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with "
                                 "a letter or digit (it becomes the git author of the service's commits)")
        chosen = parse_scopes(scopes)
        with self._lock:
            entries = list(self._read())
            if any(e.name == name for e in entries):
                raise TokenNameError(f"a token named {name!r} exists: 'deployer token rm {name}' first")
            token = new_token()
            created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            self._write([*entries, TokenEntry(name, hash_token(token), chosen, created)])
        return token

    def remove(self, name: str) -> TokenEntry:
        with self._lock:
            entries = list(self._read())
            kept = [e for e in entries if e.name != name]
            if len(kept) == len(entries):
                raise TokenNameError(f"no token named {name!r} in {self.path}")
            self._write(kept)
            return next(e for e in entries if e.name == name)

    def verify(self, token: str) -> Identity | None:
        """The identity of ``token``, or None; every stored digest is compared in constant time."""
        if not token:
            return None
        digest = hash_token(token)
        with self._lock:
            entries = self._read()
        found = None
        for entry in entries:
            if hmac.compare_digest(entry.sha256, digest):
                found = entry
        return Identity(found.name, found.scopes) if found else None

    def verify_name(self, name: str) -> bool:
        """Whether a token named ``name`` is still in the file (a session of a removed token ends)."""
        with self._lock:
            return any(e.name == name for e in self._read())


# -- sessions (the page) ------------------------------------------------------------------


@dataclass
class Session:
    id: str
    identity: Identity
    csrf: str
    expires: float


class SessionStore:
    """Sessions in memory: a restart signs everybody out (they sign in again with their token)."""

    def __init__(self, ttl: float = SESSION_TTL):
        self.ttl = ttl
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, identity: Identity) -> Session:
        session = Session(secrets.token_urlsafe(32), Identity(identity.name, identity.scopes, "session"),
                          secrets.token_urlsafe(32), time.time() + self.ttl)
        with self._lock:
            now = time.time()
            for sid in [k for k, s in self._sessions.items() if s.expires < now]:
                del self._sessions[sid]
            self._sessions[session.id] = session
        return session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            session = self._sessions.get(sid)
            if session is not None and session.expires < time.time():
                del self._sessions[sid]
                return None
            return session

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._sessions.pop(sid or "", None)

    def drop_name(self, name: str) -> None:
        """Sign out every session of a token that was removed."""
        with self._lock:
            for sid in [k for k, s in self._sessions.items() if s.identity.name == name]:
                del self._sessions[sid]


# -- the failed-auth limit ------------------------------------------------------------------


@dataclass
class RateLimiter:
    limit: int = LIMIT
    window: float = WINDOW
    _failures: dict[str, deque] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def retry_after(self, key: str, now: float | None = None) -> float | None:
        """Seconds until ``key`` may try again, or None when it is not limited."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._failures.get(key)
            if not times:
                return None
            while times and times[0] <= now - self.window:
                times.popleft()
            if not times:
                del self._failures[key]
                return None
            return times[0] + self.window - now if len(times) >= self.limit else None

    def failed(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if len(self._failures) > 100_000:  # a flood of addresses: forget the oldest half
                for k in list(self._failures)[:50_000]:
                    del self._failures[k]
            self._failures.setdefault(key, deque(maxlen=self.limit * 2)).append(now)


# -- requests ---------------------------------------------------------------------------------


def _serve(request: Any):
    return request.app.state.serve


def client_key(request: Any) -> str:
    return request.client.host if request.client else "unknown"


def bearer(request: Any) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _limited(state: Any, request: Any) -> None:
    wait = state.limiter.retry_after(client_key(request))
    if wait is not None:
        raise ApiError(429, f"too many failed sign-ins from {client_key(request)}: try again in {wait:.0f}s",
                       {"Retry-After": str(max(1, int(wait + 0.999)))})


def _fail(state: Any, request: Any, message: str) -> ApiError:
    state.limiter.failed(client_key(request))
    return ApiError(401, message, {"WWW-Authenticate": 'Bearer realm="deployer"'})


def identify(request: Any) -> Identity:
    """Who made ``request`` (bearer token or session cookie); ApiError 401 (or 429 when limited)."""
    state = _serve(request)
    _limited(state, request)
    token = bearer(request)
    if token is not None:
        identity = state.tokens.verify(token)
        if identity is None:
            raise _fail(state, request, "unknown token")
        return identity
    if request.headers.get("authorization"):
        raise _fail(state, request, "Authorization must be 'Bearer TOKEN'")
    sid = request.cookies.get(SESSION_COOKIE)
    session = state.sessions.get(sid)
    if session is None:  # no cookie, or one of a session that ended (not counted: 256 random bits)
        raise ApiError(401, "no token: send 'Authorization: Bearer TOKEN' or sign in" if not sid else
                       "the session ended: sign in again", {"WWW-Authenticate": 'Bearer realm="deployer"'})
    if state.tokens.verify_name(session.identity.name) is False:
        state.sessions.drop(sid)
        raise _fail(state, request, "the session's token was removed: sign in again")
    request.state.session = session
    return session.identity


def require(request: Any, scope: str, csrf_value: str | None = None) -> Identity:
    """The request's identity when it holds ``scope``: 401 without one, 403 without the scope.

    A session (cookie) request with an unsafe method must carry the CSRF token (header, or
    ``csrf_value`` from a form) and a same-host Origin, when the browser sends one."""
    identity = identify(request)
    if identity.via == "session" and request.method not in SAFE_METHODS:
        check_csrf(request, csrf_value)
    if not identity.allows(scope):
        raise ApiError(403, f"token {identity.name!r} lacks the {scope!r} scope (it has: {', '.join(identity.scopes)})")
    return identity


def csrf_token(request: Any) -> str | None:
    """The CSRF token of the request's session (for a form's hidden field), None without a session."""
    session = _serve(request).sessions.get(request.cookies.get(SESSION_COOKIE))
    return session.csrf if session else None


def same_origin(request: Any) -> bool:
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


def check_csrf(request: Any, value: str | None = None) -> None:
    """ApiError 403 unless the request carries its session's CSRF token and comes from this origin."""
    session = _serve(request).sessions.get(request.cookies.get(SESSION_COOKIE))
    given = value if value is not None else request.headers.get(CSRF_HEADER, "")
    if session is None or not given or not hmac.compare_digest(session.csrf, given):
        raise ApiError(403, "missing or wrong CSRF token")
    if not same_origin(request):
        raise ApiError(403, f"cross-origin request refused (Origin {request.headers.get('origin')!r})")


def sign_in(request: Any, token: str) -> Session:
    """A session for ``token`` (the page's sign-in form); ApiError 401/429 like a bearer request."""
    state = _serve(request)
    _limited(state, request)
    identity = state.tokens.verify(token.strip())
    if identity is None:
        raise _fail(state, request, "unknown token")
    return state.sessions.create(identity)


def set_session_cookie(response: Any, request: Any, session: Session) -> None:
    response.set_cookie(SESSION_COOKIE, session.id, max_age=int(SESSION_TTL), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")


def sign_out(request: Any, response: Any) -> None:
    _serve(request).sessions.drop(request.cookies.get(SESSION_COOKIE))
    response.delete_cookie(SESSION_COOKIE, path="/")
