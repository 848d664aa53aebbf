"""The admin API as the gateway serves it: its audit log beside the keys, and its app.

Imported only when admin access is configured: FastAPI costs every process
memory that a gateway without admins does not need to pay.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI

from gateway.admin.app import create_admin_app
from gateway.admin.audit import AuditLog, SqliteAuditLog
from gateway.admin.auth import AdminAuthorizer
from gateway.admin.guard import SignInGuard
from gateway.admin.sessions import SessionStore
from gateway.auth.service import AuthService
from gateway.keys.store import KeyStore
from gateway.limits.quota_admission import QuotaAdmissions
from gateway.settings import AdminUISettings, FailedSignInSettings, KeyStoreSettings
from gateway.tenants.directory import TenantDirectory
from gateway.tenants.store import TenantStore
from gateway.upstreams.pool import Pools
from gateway.usage.store import UsageStore


async def open_audit_log(settings: KeyStoreSettings) -> AuditLog:
    """The audit log lives beside the keys: the same SQLite file, or the same Redis."""
    if settings.backend == "redis":
        from gateway.admin.audit_redis import RedisAuditLog  # noqa: PLC0415 (optional backend)

        assert settings.redis_url is not None  # checked by the settings
        return RedisAuditLog.connect(settings.redis_url.get_secret_value())
    return await SqliteAuditLog.open(settings.sqlite_path)


def admin_app(
    store: KeyStore,
    audit: AuditLog,
    pepper: bytes,
    tokens: list[str],
    jwt_check: Callable[[str], Awaitable[str | None]] | None,
    *,
    usage: UsageStore | None = None,
    pools: Pools | None = None,
    quotas: QuotaAdmissions | None = None,
    tenants: tuple[TenantStore, TenantDirectory] | None = None,
    scrape_token: str | None = None,
    sessions: SessionStore | None = None,
    guard: SignInGuard | None = None,
    on_refusal: Callable[[str], None] | None = None,
) -> FastAPI:
    """The admin app; the caller owns (opens and closes) `store`, `audit` and `usage`,
    and `pools`, which the admin API only reads. `scrape_token` (`metrics.token`) may
    read Prometheus' service discovery too. `sessions`: the web UI's, when it is on.
    `guard` counts wrong credentials per client address; `on_refusal` is told the
    reason of each refusal for a credential (the metric)."""
    authorizer = AdminAuthorizer(
        tokens, jwt_check=jwt_check, scrape_token=scrape_token, guard=guard, on_refusal=on_refusal
    )
    return create_admin_app(
        store,
        audit,
        pepper,
        authorizer,
        usage=usage,
        pools=pools,
        quotas=quotas,
        tenants=tenants,
        sessions=sessions,
    )


def sign_in_guard(settings: FailedSignInSettings) -> SignInGuard | None:
    return None if settings.limit is None else SignInGuard(settings.limit, settings.window)


def ui_sessions(settings: AdminUISettings, workers: int) -> SessionStore | None:
    """The web UI's session store; None (no UI) when it is off, or when several worker
    processes share the admin listener: a session lives in one process's memory."""
    if not settings.enabled or workers > 1:
        return None
    return SessionStore(
        idle_seconds=settings.session_idle_seconds,
        max_age_seconds=settings.session_max_age_seconds,
        max_sessions=settings.max_sessions,
    )


def admin_jwt_check(
    auth: AuthService, claim: str | None
) -> Callable[[str], Awaitable[str | None]] | None:
    """The admin API's JWT check: a valid token whose CLAIM is true names an admin."""
    if claim is None:
        return None

    async def check(token: str) -> str | None:
        return await auth.admin_subject(token, claim)

    return check
