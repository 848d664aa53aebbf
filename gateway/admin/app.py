"""`create_admin_app`: the admin API as a FastAPI app, with its errors in OpenAI's shape.

    /admin/docs, /admin/openapi.json   public: the schema holds no secret, and
                                       Swagger UI cannot send a header on page load
    /admin/v1/...                      401 without an admin credential, always

Errors are mapped here, once: the key store's, the audit log's and the usage
store's to 404, 409 or 503 with their own message; FastAPI's validation errors
to 422 naming the field but never echoing its value (it may be a secret pasted
in the wrong place).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.admin.audit import CURSOR_PATTERN, MAX_PAGE, AuditLog, AuditLogError
from gateway.admin.auth import AdminAuthMiddleware, AdminAuthorizer
from gateway.admin.keys import Admin, KeyRoutes, UsageRoutes
from gateway.admin.prometheus_sd import PrometheusTargetRoutes
from gateway.admin.quotas import QuotaRoutes
from gateway.admin.schemas import AuditEntryOut, AuditPage, ErrorOut
from gateway.admin.sessions import SessionStore
from gateway.admin.tenants import TenantRoutes
from gateway.admin.ui_routes import UIHeadersMiddleware, UIRoutes, load_ui_files
from gateway.admin.upstreams import UpstreamRoutes
from gateway.admin.usage_report import ReportRoutes
from gateway.errors import error_body
from gateway.keys.store import KeyExists, KeyNotFound, KeyStore, KeyStoreError
from gateway.limits.limiter import LimiterBackendError
from gateway.limits.quota_admission import QuotaAdmissions
from gateway.tenants.directory import TenantDirectory
from gateway.tenants.store import (
    MemoryTenantStore,
    TenantExists,
    TenantNotFound,
    TenantStore,
    TenantStoreError,
)
from gateway.upstreams.pool import Pools
from gateway.upstreams.scrape_targets import TARGETS_PATH
from gateway.usage.store import MemoryUsageStore, UsageStore, UsageStoreError

PREFIX = "/admin/v1"
_ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorOut, "description": text}
    for status, text in (
        (401, "No admin credential, or a wrong one"),
        (404, "No such key"),
        (409, "Conflicts with the key's state"),
        (422, "The request does not fit the schema"),
        (503, "The key store, audit log or usage store cannot do it now; nothing was changed"),
    )
}


def utc_now() -> datetime:
    return datetime.now(UTC)


def create_admin_app(
    store: KeyStore,
    audit: AuditLog,
    pepper: bytes,
    authorize: AdminAuthorizer,
    clock: Callable[[], datetime] = utc_now,
    *,
    usage: UsageStore | None = None,
    pools: Pools | None = None,
    quotas: QuotaAdmissions | None = None,
    tenants: tuple[TenantStore, TenantDirectory] | None = None,
    sessions: SessionStore | None = None,
) -> FastAPI:
    """The admin API over `store`, recording to `audit`, guarded by `authorize`.

    The caller owns `store`, `audit` and `usage` (opens and closes them); `pepper`
    hashes new secrets exactly as the request path verifies them. Without `usage`,
    nothing is counted: every usage read answers zeros. `pools` are the gateway's
    live replicas, shown (never changed) by the upstreams route; without, it lists none.
    `tenants` is the tenant store and the directory that applies its changes; without,
    tenants live in memory for this app only.
    With `sessions`, the web UI is served at /admin/ui and its session cookie (with
    its CSRF token) authenticates admin API calls too; without, neither exists.
    """
    if not pepper:
        raise ValueError("the key pepper must not be empty")
    app = FastAPI(
        title="vllm-gateway admin API",
        version="1",
        docs_url="/admin/docs",
        redoc_url=None,
        openapi_url="/admin/openapi.json",
        responses=_ERRORS,
    )
    keys = KeyRoutes(store=store, audit=audit, pepper=pepper, clock=clock)
    app.include_router(keys.router(), prefix=PREFIX)
    usage = MemoryUsageStore() if usage is None else usage
    app.include_router(UsageRoutes(store=store, usage=usage).router(), prefix=PREFIX)
    report = ReportRoutes(store=store, usage=usage, quotas=quotas, clock=clock)
    app.include_router(report.router(), prefix=PREFIX)
    app.include_router(QuotaRoutes(store=store, quotas=quotas).router(), prefix=PREFIX)
    tenant_store, directory = tenants or (MemoryTenantStore(), TenantDirectory({}))
    tenant_routes = TenantRoutes(tenant_store, directory, store, audit, clock)
    app.include_router(tenant_routes.router(), prefix=PREFIX)
    app.add_api_route(f"{PREFIX}/audit", _audit_route(audit), methods=["GET"], tags=["audit"])
    app.include_router(UpstreamRoutes(pools).router(), prefix=PREFIX)
    app.include_router(PrometheusTargetRoutes(pools).router(), prefix=PREFIX)
    _install_error_handlers(app)
    # Prometheus' service discovery may use the read-only scrape token instead.
    scrape_paths = frozenset({f"{PREFIX}{TARGETS_PATH}"})
    app.add_middleware(
        AdminAuthMiddleware,
        authorizer=authorize,
        prefix=PREFIX,
        scrape_paths=scrape_paths,
        sessions=sessions,
    )
    if sessions is not None:
        app.include_router(UIRoutes(authorize, sessions, load_ui_files()).router())
        app.add_middleware(UIHeadersMiddleware)
    return app


def _audit_route(audit: AuditLog) -> Callable[..., object]:
    async def read_audit(
        admin: Admin,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN)] = None,
    ) -> AuditPage:
        """Admin actions, newest first: who, what, when and which key. Never a secret."""
        try:
            entries, next_cursor = await audit.list(limit=limit, cursor=cursor)
        except ValueError as exc:
            raise StarletteHTTPException(422, str(exc)) from exc
        return AuditPage(data=[AuditEntryOut.of(e) for e in entries], next_cursor=next_cursor)

    return read_audit


def _json_error(status: int, message: str, code: str, param: str | None = None) -> Response:
    error_type = "invalid_request_error" if status < 500 else "service_unavailable"
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    body = error_body(message, error_type, param, code)
    return Response(body, status, headers=headers, media_type="application/json")


_HTTP_CODES = {
    401: "invalid_admin_credentials",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    422: "invalid_request",
}


def _install_error_handlers(app: FastAPI) -> None:
    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        response = _json_error(
            exc.status_code, str(exc.detail), _HTTP_CODES.get(exc.status_code, "error")
        )
        response.headers.update(exc.headers or {})
        return response

    async def validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = [_problem(error) for error in exc.errors()]
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(_location(part) for part in first.get("loc", ())[1:]) or None
        return _json_error(422, "; ".join(problems) or "invalid request", "invalid_request", param)

    async def store_error(_: Request, exc: Exception) -> Response:
        if isinstance(exc, KeyNotFound):
            return _json_error(404, str(exc), "key_not_found")
        if isinstance(exc, KeyExists):
            return _json_error(409, str(exc), "key_exists")
        return _json_error(503, str(exc), "key_store_unavailable")

    async def audit_error(_: Request, exc: Exception) -> Response:
        return _json_error(503, str(exc), "audit_log_unavailable")

    async def usage_error(_: Request, exc: Exception) -> Response:
        return _json_error(503, str(exc), "usage_store_unavailable")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(KeyStoreError, store_error)
    app.add_exception_handler(AuditLogError, audit_error)
    app.add_exception_handler(UsageStoreError, usage_error)

    async def tenant_error(_: Request, exc: Exception) -> Response:
        if isinstance(exc, TenantNotFound):
            return _json_error(404, str(exc), "tenant_not_found")
        if isinstance(exc, TenantExists):
            return _json_error(409, str(exc), "tenant_exists")
        return _json_error(503, str(exc), "tenant_store_unavailable")

    app.add_exception_handler(TenantStoreError, tenant_error)

    async def quota_error(_: Request, exc: Exception) -> Response:
        return _json_error(503, str(exc), "quota_backend_unavailable")

    app.add_exception_handler(LimiterBackendError, quota_error)


def _problem(error: object) -> str:
    """`body.tenant: String should have at most 128 characters`, without the input value."""
    if not isinstance(error, dict):
        return "invalid request"
    where = ".".join(_location(part) for part in error.get("loc", ()))
    return f"{where}: {error.get('msg', 'invalid')}"


def _location(part: object) -> str:
    # Field names and list indexes; a mapping's key may be anything a client sent.
    text = str(part)
    return text if text.isidentifier() or text.isdecimal() else "[key]"
