"""The admin web UI: its page and files, its sign-in session, and its security headers.

    GET    /admin/ui                  the page (one HTML document; the rest is its JS)
    GET    /admin/ui/static/<file>    the page's CSS and JS, from the package itself
    POST   /admin/ui/session          sign in with an admin token or admin JWT
    GET    /admin/ui/session          who is signed in, and the session's CSRF token
    DELETE /admin/ui/session          sign out (needs the CSRF token)

The page works through the admin API only (`/admin/v1/...`), authenticated by the
session cookie that sign-in sets; `AdminAuthMiddleware` checks it and the CSRF
header. Nothing here is loaded from anywhere but this gateway: the CSP says so
to the browser, and the files are read from the package once, at start.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.admin.auth import AdminAuthorizer, throttled_body
from gateway.admin.sessions import COOKIE_NAME, CSRF_HEADER, Session, SessionStore, cookie_value
from gateway.errors import error_body

UI_PREFIX = "/admin/ui"
COOKIE_PATH = "/admin"
MAX_SIGN_IN_BYTES = 16_384
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    # The page and the session answer show data; the assets are a few KB: none is kept.
    (b"cache-control", b"no-store"),
]


def load_ui_files() -> dict[str, tuple[bytes, str]]:
    """Every file of the UI, by name, with its content type: read once, at start."""
    folder = importlib.resources.files("gateway.admin") / "ui"
    files: dict[str, tuple[bytes, str]] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            files[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    if "index.html" not in files:
        raise RuntimeError("the admin UI's index.html is missing from the package")
    return files


@dataclass(frozen=True, slots=True)
class UIRoutes:
    authorizer: AdminAuthorizer
    sessions: SessionStore
    files: dict[str, tuple[bytes, str]]

    def router(self) -> APIRouter:
        router = APIRouter(prefix=UI_PREFIX, include_in_schema=False)
        router.add_api_route("", self.page, methods=["GET"])
        router.add_api_route("/", self.page, methods=["GET"])
        router.add_api_route("/static/{name}", self.static, methods=["GET"])
        router.add_api_route("/session", self.sign_in, methods=["POST"])
        router.add_api_route("/session", self.current, methods=["GET"])
        router.add_api_route("/session", self.sign_out, methods=["DELETE"])
        return router

    async def page(self) -> Response:
        body, media_type = self.files["index.html"]
        return Response(body, media_type=media_type)

    async def static(self, name: str) -> Response:
        found = self.files.get(name) if name != "index.html" else None
        if found is None:
            return _error(404, f"no such file: {name[:64]!r}", "not_found")
        return Response(found[0], media_type=found[1])

    async def sign_in(self, request: Request) -> Response:
        """Check an admin credential once; from then on the cookie stands for it."""
        wait = self.authorizer.held_back(request.scope)
        if wait is not None:
            headers = {"retry-after": str(wait)}
            return Response(throttled_body(wait), 429, headers, media_type="application/json")
        token = await _token_sent(request)
        if token is None:
            return _error(400, 'send {"token": "<admin token or JWT>"} as JSON', "bad_sign_in")
        identity = await self.authorizer.identify(b"Bearer " + token.encode("utf-8"))
        if identity is None:
            self.authorizer.refused(request.scope)
            return _error(401, "that is not an admin token", "invalid_admin_credentials")
        # A fresh id at every sign-in, the one before (if any) ended: no fixation.
        self.sessions.delete(cookie_value(request.scope["headers"]))
        session_id, session = self.sessions.create(identity)
        response = _session_answer(session, self.sessions, 201)
        response.headers["set-cookie"] = _cookie(session_id, request, self.sessions)
        return response

    async def current(self, request: Request) -> Response:
        session = self.sessions.get(cookie_value(request.scope["headers"]))
        if session is None:
            return _error(401, "not signed in", "invalid_admin_credentials")
        return _session_answer(session, self.sessions, 200)

    async def sign_out(self, request: Request) -> Response:
        session_id = cookie_value(request.scope["headers"])
        session = self.sessions.get(session_id)
        if session is not None and not session.csrf_matches(
            request.headers.get(CSRF_HEADER, "").encode("latin-1") or None
        ):
            return _error(403, "signing out needs the session's CSRF token", "csrf_token_invalid")
        self.sessions.delete(session_id)
        response = Response(status_code=204)
        response.headers["set-cookie"] = _cookie("", request, self.sessions, expire=True)
        return response


async def _token_sent(request: Request) -> str | None:
    # JSON only: a cross-site HTML form cannot send it without the browser asking first.
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_SIGN_IN_BYTES:
            return None
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    token = parsed.get("token") if isinstance(parsed, dict) else None
    return token if isinstance(token, str) and token.strip() else None


def _session_answer(session: Session, sessions: SessionStore, status: int) -> Response:
    body = {
        "identity": session.identity,
        "csrf_token": session.csrf_token,
        "idle_seconds": sessions.idle_seconds,
    }
    return Response(orjson.dumps(body), status, media_type="application/json")


def _cookie(value: str, request: Request, sessions: SessionStore, *, expire: bool = False) -> str:
    # No Max-Age: the browser forgets it when it closes; the store ends it sooner.
    parts = [f"{COOKIE_NAME}={value}", f"Path={COOKIE_PATH}", "HttpOnly", "SameSite=Strict"]
    if request.url.scheme == "https":
        parts.append("Secure")
    if expire:
        parts += ["Max-Age=0", "Expires=Thu, 01 Jan 1970 00:00:00 GMT"]
    return "; ".join(parts)


def _error(status: int, message: str, code: str) -> Response:
    body = error_body(message, "invalid_request_error", None, code)
    return Response(body, status, media_type="application/json")


class UIHeadersMiddleware:
    """Adds `SECURITY_HEADERS` to every answer under /admin/ui, errors included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != UI_PREFIX and not path.startswith(UI_PREFIX + "/"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in SECURITY_HEADERS}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": [*kept, *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
