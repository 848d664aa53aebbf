"""The key routes of the admin API (create, list, get, update, revoke, rotate) and usage.

Each change is written to the key store first and to the audit log after: an
entry says what happened, not what was tried. A store error leaves the key as
it was and reaches the admin as a 503 with the store's message (see `app.py`).
Usage reads are reads: they write no audit entry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.admin.audit import AuditEntry, AuditLog, AuditLogError, AuditLogUnavailable
from gateway.admin.auth import IDENTITY_STATE_KEY
from gateway.admin.schemas import (
    KEY_ID_PATTERN,
    DayRange,
    KeyCreate,
    KeyCreated,
    KeyOut,
    KeyPage,
    KeyUpdate,
    KeyUsage,
    RotateIn,
    Tenant,
    TenantUsage,
)
from gateway.keys.records import UNSET, KeyChanges, KeyRecord, new_key, new_secret
from gateway.keys.store import MAX_PAGE, KeyNotFound, KeyStore
from gateway.usage.store import UsageStore

logger = logging.getLogger("gateway.admin")

# Declares the scheme in the OpenAPI document; `AdminAuthMiddleware` enforces it.
_bearer = HTTPBearer(auto_error=False, description="An admin token, or a JWT with the admin claim")


def admin_identity(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
) -> str:
    identity = request.scope.get("state", {}).get(IDENTITY_STATE_KEY)
    if not isinstance(identity, str):  # only reachable if the middleware was left out
        raise HTTPException(401, "admin credentials required")
    return identity


Admin = Annotated[str, Depends(admin_identity)]
KeyId = Annotated[str, Path(pattern=KEY_ID_PATTERN, description="The key's public id.")]
Days = Annotated[DayRange, Query()]


@dataclass(frozen=True, slots=True)
class KeyRoutes:
    """The handlers, bound to their collaborators; `router()` mounts them."""

    store: KeyStore
    audit: AuditLog
    pepper: bytes
    clock: Callable[[], datetime]

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/keys", tags=["keys"])
        router.add_api_route("", self.create, methods=["POST"], status_code=201)
        router.add_api_route("", self.list, methods=["GET"])
        router.add_api_route("/{key_id}", self.get, methods=["GET"])
        router.add_api_route("/{key_id}", self.update, methods=["PATCH"])
        router.add_api_route("/{key_id}/revoke", self.revoke, methods=["POST"])
        router.add_api_route("/{key_id}/rotate", self.rotate, methods=["POST"])
        return router

    async def create(self, body: KeyCreate, admin: Admin) -> KeyCreated:
        """Create a key. The response holds the full key: the only time it is shown."""
        now = self.clock()
        key, record = new_key(
            self.pepper,
            tenant=body.tenant,
            name=body.name,
            created_at=now,
            models=None if body.models is None else frozenset(body.models),
            limits=body.limits.to_limits(),
            expires_at=body.expires_at,
            metadata=body.metadata,
        )
        await self.store.create(record)
        await self._audit(admin, "key.create", record)
        return KeyCreated.with_key(record, now, key.token)

    async def list(
        self,
        admin: Admin,
        tenant: Annotated[Tenant | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        cursor: Annotated[str | None, Query(pattern=KEY_ID_PATTERN)] = None,
    ) -> KeyPage:
        """Keys in id order, of one tenant or all; follow `next_cursor` for more."""
        records, next_cursor = await self.store.list(tenant=tenant, limit=limit, cursor=cursor)
        now = self.clock()
        return KeyPage(data=[KeyOut.of(r, now) for r in records], next_cursor=next_cursor)

    async def get(self, key_id: KeyId, admin: Admin) -> KeyOut:
        """One key, revoked and expired ones included."""
        return KeyOut.of(await self._record(key_id), self.clock())

    async def update(self, key_id: KeyId, body: KeyUpdate, admin: Admin) -> KeyOut:
        """Change name, models, limits, expiry or metadata; absent fields stay as they are."""
        fields = body.model_fields_set
        models = body.models
        changes = KeyChanges(
            name=body.name if body.name is not None else UNSET,
            models=(None if models is None else frozenset(models)) if "models" in fields else UNSET,
            limits=body.limits.to_limits() if body.limits is not None else UNSET,
            expires_at=body.expires_at if "expires_at" in fields else UNSET,
            metadata=body.metadata if body.metadata is not None else UNSET,
        )
        record = await self.store.update(key_id, changes)
        await self._audit(admin, "key.update", record, {"fields": ",".join(sorted(fields))})
        return KeyOut.of(record, self.clock())

    async def revoke(self, key_id: KeyId, admin: Admin) -> KeyOut:
        """Revoke a key for good; revoking it again changes nothing."""
        record = await self._record(key_id)
        if record.revoked_at is None:
            record = await self.store.update(key_id, KeyChanges(revoked_at=self.clock()))
            await self._audit(admin, "key.revoke", record)
        return KeyOut.of(record, self.clock())

    async def rotate(
        self, key_id: KeyId, admin: Admin, body: Annotated[RotateIn | None, Body()] = None
    ) -> KeyCreated:
        """Give the key a new secret, shown in this response only.

        With `grace_seconds`, the old secret keeps working that long; without, it stops now.
        """
        grace = (body or RotateIn()).grace_seconds
        if (await self._record(key_id)).revoked_at is not None:
            raise HTTPException(409, f"key {key_id} is revoked; create a new key instead")
        now = self.clock()
        grace_until = now + timedelta(seconds=grace) if grace else None
        key, rotation = new_secret(self.pepper, key_id, grace_until=grace_until)
        record = await self.store.update(key_id, KeyChanges(rotation=rotation))
        detail = {"grace_seconds": str(grace)}
        await self._audit(admin, "key.rotate", record, detail)
        return KeyCreated.with_key(record, now, key.token)

    async def _record(self, key_id: str) -> KeyRecord:
        return await key_record(self.store, key_id)

    async def _audit(
        self, admin: str, action: str, record: KeyRecord, detail: Mapping[str, str] | None = None
    ) -> None:
        entry = AuditEntry(
            at=self.clock(),
            actor=admin,
            action=action,
            key_id=record.id,
            tenant=record.tenant,
            detail=detail or {},
        )
        try:
            await self.audit.append(entry)
        except AuditLogError as exc:
            message = f"{action} of key {record.id} was done, but could not be audited: {exc}"
            raise AuditLogUnavailable(message) from exc
        logger.info("admin %s: %s key %s", admin, action, record.id)


async def key_record(store: KeyStore, key_id: str) -> KeyRecord:
    record = await store.get(key_id)
    if record is None:
        raise KeyNotFound(key_id)
    return record


@dataclass(frozen=True, slots=True)
class UsageRoutes:
    """Requests and tokens as `usage` counted them, per key and per tenant.

    A key's usage is the usage store's rows for its id as the principal; a
    tenant's is every row of that tenant, whichever key or JWT subject made it.
    """

    store: KeyStore
    usage: UsageStore

    def router(self) -> APIRouter:
        router = APIRouter(tags=["usage"])
        router.add_api_route("/keys/{key_id}/usage", self.key_usage, methods=["GET"])
        # `:path`: a tenant name may hold a `/`, sent as %2F.
        router.add_api_route("/tenants/{tenant:path}/usage", self.tenant_usage, methods=["GET"])
        return router

    async def key_usage(self, key_id: KeyId, admin: Admin, days: Days) -> KeyUsage:
        """A key's requests and tokens per model and in total, over UTC days; and its last use."""
        record = await key_record(self.store, key_id)
        per_model = await self.usage.by_principal(key_id, days.since, days.until)
        return KeyUsage.of(record, per_model, days)

    async def tenant_usage(
        self, tenant: Annotated[Tenant, Path()], admin: Admin, days: Days
    ) -> TenantUsage:
        """A tenant's requests and tokens per model and in total, over UTC days.

        Every key and JWT subject of the tenant counts. A tenant nothing was counted
        for, known or not, has no models and zero totals.
        """
        per_model = await self.usage.by_tenant(tenant, days.since, days.until)
        return TenantUsage.of(tenant, per_model, days)
