"""Admin credentials: static tokens from the settings, or a JWT with an admin claim.

The admin API is guarded by `AdminAuthMiddleware`, a plain ASGI class in front of
FastAPI's routing, so a request without admin credentials gets a 401 before its
body is parsed or its path looked up: nothing under `/admin/v1` answers anyone
else, not even with a validation error. The identity it finds (`token:<index>`
or `jwt:<sub>`, never the credential) goes to the handlers in `scope["state"]`
and from there to the audit log.

The read-only scrape credential (`metrics.token`) is accepted too, on the few
`scrape_paths` only (Prometheus' service discovery of the replicas): Prometheus
then holds a token that reads what `/metrics` already shows, not one that can
mint keys. Everywhere else under the prefix it is refused like any stranger.

Wrong credentials are counted per client address (`guard.py`): past the limit,
the address gets 429 until its window ends, whatever it presents.

The admin web UI's session cookie (`sessions.py`) is accepted too, when the
request carries no Authorization header at all: a Bearer credential always
decides alone. With the cookie, a request that may change something (anything
but GET and HEAD) must also carry the session's CSRF token in `X-CSRF-Token`,
or it is refused with 403: a cross-site form or script can make the browser
send the cookie, never the header.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.admin.guard import SignInGuard
from gateway.admin.sessions import CSRF_HEADER, SessionStore, cookie_value
from gateway.errors import error_body

# Returns the admin's subject when the token is a valid JWT carrying the admin claim.
JWTAdminCheck = Callable[[str], Awaitable[str | None]]

MAX_CREDENTIAL_BYTES = 16_384
IDENTITY_STATE_KEY = "admin_identity"
SCRAPER_IDENTITY = "metrics-token"


class AdminAuthorizer:
    """Decides whether an `Authorization` header value is an admin's, and whose.

    Static tokens are compared as SHA-256 digests with `hmac.compare_digest`,
    against every configured token without stopping at a match, so neither the
    time taken nor an early exit says which token (or how much of one) matched.
    """

    def __init__(
        self,
        tokens: Sequence[str],
        *,
        jwt_check: JWTAdminCheck | None = None,
        scrape_token: str | None = None,
        guard: SignInGuard | None = None,
        on_refusal: Callable[[str], None] | None = None,
    ) -> None:
        if any(not token for token in tokens) or scrape_token == "":
            raise ValueError("an admin or scrape token must not be empty")
        self._digests = [_digest(token.encode("utf-8")) for token in tokens]
        self._jwt_check = jwt_check
        self._scrape = None if scrape_token is None else _digest(scrape_token.encode("utf-8"))
        # Wrong credentials per client address (guard.py); None: not counted.
        self.guard = guard
        # Told each refusal's reason ("admin_credentials", "admin_throttled"): the metric.
        self._on_refusal = on_refusal

    def refused(self, scope: Scope) -> None:
        """The client of SCOPE presented a wrong admin credential: counted, and told to
        the guard."""
        if self._on_refusal is not None:
            self._on_refusal("admin_credentials")
        if self.guard is not None:
            self.guard.failed(scope)

    def held_back(self, scope: Scope) -> int | None:
        """Whole seconds the client of SCOPE must wait before presenting a credential
        (the refusal counted), or None when it may now."""
        wait = None if self.guard is None else self.guard.retry_after(scope)
        if wait is not None and self._on_refusal is not None:
            self._on_refusal("admin_throttled")
        return wait

    def is_scraper(self, authorization: bytes | None) -> bool:
        """The header carries the read-only scrape credential (`metrics.token`)."""
        credential = _bearer(authorization)
        if credential is None or self._scrape is None:
            return False
        return hmac.compare_digest(_digest(credential), self._scrape)

    async def identify(self, authorization: bytes | None) -> str | None:
        """The admin identity for a raw `Authorization` header value, or None."""
        credential = _bearer(authorization)
        if credential is None:
            return None
        digest = _digest(credential)
        matched: int | None = None
        for index, expected in enumerate(self._digests):
            if hmac.compare_digest(digest, expected) and matched is None:
                matched = index
        if matched is not None:
            return f"token:{matched}"
        if self._jwt_check is None or not credential.isascii():
            return None
        subject = await self._jwt_check(credential.decode("ascii"))
        return None if subject is None else f"jwt:{subject}"


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def _bearer(header: bytes | None) -> bytes | None:
    """The credential of `Bearer <credential>`; None for anything else or too long."""
    if not header or len(header) > MAX_CREDENTIAL_BYTES:
        return None
    scheme, _, credential = header.partition(b" ")
    credential = credential.strip(b" \t")
    if scheme.lower() != b"bearer" or not credential:
        return None
    return credential


class AdminAuthMiddleware:
    """Refuse every request under `prefix` that carries no admin credential (401); a GET
    of one of `scrape_paths` may carry the scrape credential instead."""

    def __init__(
        self,
        app: ASGIApp,
        authorizer: AdminAuthorizer,
        *,
        prefix: str,
        scrape_paths: frozenset[str] = frozenset(),
        sessions: SessionStore | None = None,
    ) -> None:
        self.app = app
        self.authorizer = authorizer
        self.prefix = prefix.rstrip("/")
        self.scrape_paths = scrape_paths
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _under(scope["path"], self.prefix):
            await self.app(scope, receive, send)
            return
        presented = _has(scope, b"authorization")
        wait = self.authorizer.held_back(scope) if presented else None
        if wait is not None:
            await throttled(send, wait)
            return
        authorization = _header(scope, b"authorization")
        identity = await self.authorizer.identify(authorization)
        if identity is None and self._scrapes(scope) and self.authorizer.is_scraper(authorization):
            identity = SCRAPER_IDENTITY
        if identity is None and presented:
            self.authorizer.refused(scope)
        if identity is None and self.sessions is not None and not presented:
            session = self.sessions.get(cookie_value(scope["headers"]))
            if (
                session is not None
                and not _safe(scope)
                and not session.csrf_matches(_header(scope, CSRF_HEADER.encode()))
            ):
                await _csrf_refused(send)
                return
            identity = None if session is None else session.identity
        if identity is None:
            await _unauthorized(send)
            return
        scope.setdefault("state", {})[IDENTITY_STATE_KEY] = identity
        await self.app(scope, receive, send)

    def _scrapes(self, scope: Scope) -> bool:
        return scope["method"] in ("GET", "HEAD") and scope["path"] in self.scrape_paths


def _safe(scope: Scope) -> bool:
    return scope["method"] in ("GET", "HEAD")


def _has(scope: Scope, name: bytes) -> bool:
    return any(key.lower() == name for key, _ in scope["headers"])


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def _header(scope: Scope, name: bytes) -> bytes | None:
    values = [value for key, value in scope["headers"] if key.lower() == name]
    # Two Authorization headers are ambiguous: refuse rather than pick one.
    return values[0] if len(values) == 1 else None


async def _unauthorized(send: Send) -> None:
    body = error_body(
        "admin credentials required: send 'Authorization: Bearer <admin token or JWT>'",
        "invalid_request_error",
        None,
        "invalid_admin_credentials",
    )
    await _send_error(send, 401, body, [(b"www-authenticate", b'Bearer realm="admin"')])


def throttled_body(wait: int) -> bytes:
    return error_body(
        "too many wrong admin credentials from this address; "
        f"try again in {wait} s (admin.failed_sign_ins)",
        "invalid_request_error",
        None,
        "admin_sign_in_throttled",
    )


async def throttled(send: Send, wait: int) -> None:
    await _send_error(send, 429, throttled_body(wait), [(b"retry-after", str(wait).encode())])


async def _csrf_refused(send: Send) -> None:
    body = error_body(
        "this change needs the session's CSRF token in the X-CSRF-Token header",
        "invalid_request_error",
        None,
        "csrf_token_invalid",
    )
    await _send_error(send, 403, body)


async def _send_error(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
