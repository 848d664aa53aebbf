"""The tenant routes of the admin API: list, create, show, patch and delete tenants.

Each change is written to the tenant store first, applied to this replica's
tenant table at once, and then audited with the changed fields before and after
(tenants hold no secret). Other replicas apply it within a poll of the store's
version (gateway/tenants/directory.py).

A tenant only in the settings (`source: settings`) is copied into the store by
its first PATCH, and from then on the store's copy wins. It cannot be deleted
here (409: remove it from the settings); deleting a store tenant that shadows a
settings entry brings the settings entry back. A tenant with usable keys (not
revoked, not expired) cannot be deleted: revoke them first (409).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response

from gateway.admin.audit import AuditEntry, AuditLog, AuditLogError, AuditLogUnavailable
from gateway.admin.keys import Admin
from gateway.admin.quota_schemas import KeyQuotas
from gateway.admin.schemas import Tenant
from gateway.admin.tenant_schemas import TenantCreate, TenantList, TenantOut, TenantUpdate
from gateway.keys.store import MAX_PAGE, KeyStore
from gateway.principal import Limits, Quotas
from gateway.tenants.directory import TenantDirectory
from gateway.tenants.records import TenantRecord, tenant_doc
from gateway.tenants.store import TenantNotFound, TenantStore, TenantStoreError

logger = logging.getLogger("gateway.admin")
Name = Annotated[Tenant, Path(description="The tenant's name.")]


@dataclass(frozen=True, slots=True)
class TenantRoutes:
    store: TenantStore
    directory: TenantDirectory
    keys: KeyStore
    audit: AuditLog
    clock: Callable[[], datetime]

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/tenants", tags=["tenants"])
        router.add_api_route("", self.list, methods=["GET"])
        router.add_api_route("", self.create, methods=["POST"], status_code=201)
        # `{name}` never holds a `/`: `/tenants/{tenant:path}/usage` and `.../quota` stay apart.
        router.add_api_route("/{name}", self.get, methods=["GET"])
        router.add_api_route("/{name}", self.update, methods=["PATCH"])
        router.add_api_route("/{name}", self.delete, methods=["DELETE"], status_code=204)
        return router

    async def list(self, admin: Admin) -> TenantList:
        """Every tenant, from the store and the settings, by name."""
        merged = self.directory.merged(await self.store.all())
        return TenantList(data=[TenantOut.of(record) for record in merged.values()])

    async def get(self, name: Name, admin: Admin) -> TenantOut:
        return TenantOut.of(await self._current(name))

    async def create(self, body: TenantCreate, admin: Admin) -> TenantOut:
        """Create a tenant; 409 if one of that name exists, in the store or the settings."""
        if body.name in self.directory.seeds:
            raise HTTPException(409, f"tenant {body.name!r} is in the settings; PATCH it instead")
        now = self.clock()
        record = TenantRecord(
            name=body.name,
            limits=replace(body.limits.over(Limits()), quotas=body.quotas.to_quotas()),
            models=None if body.models is None else frozenset(body.models),
            metadata=dict(body.metadata),
            created_at=now,
            updated_at=now,
        )
        await self.store.create(record)
        await self._applied(admin, "tenant.create", None, record)
        return TenantOut.of(record)

    async def update(self, name: Name, body: TenantUpdate, admin: Admin) -> TenantOut:
        """Change limits, quotas, models or metadata; a settings tenant is copied to the store."""
        before = await self._current(name)
        given = body.model_fields_set
        limits = before.limits if body.limits is None else body.limits.over(before.limits)
        if body.quotas is not None:
            limits = replace(limits, quotas=_quotas_over(body.quotas, before.quotas))
        models = before.models
        if "models" in given:
            models = None if body.models is None else frozenset(body.models)
        now = self.clock()
        after = TenantRecord(
            name=before.name,
            limits=limits,
            models=models,
            metadata=before.metadata if body.metadata is None else dict(body.metadata),
            created_at=before.created_at or now,
            updated_at=now,
        )
        if before.source == "settings":
            await self.store.create(after)
        else:
            await self.store.replace(after)
        await self._applied(admin, "tenant.update", before, after)
        return TenantOut.of(after)

    async def delete(self, name: Name, admin: Admin) -> Response:
        """Delete a stored tenant: 409 while it has usable keys, or if only in the settings."""
        record = await self._current(name)
        if record.source == "settings":
            raise HTTPException(409, f"tenant {name!r} is defined in the settings; remove it there")
        if await self._has_usable_keys(name):
            raise HTTPException(409, f"tenant {name!r} has usable API keys; revoke them first")
        await self.store.delete(name)
        await self._applied(admin, "tenant.delete", record, None)
        return Response(status_code=204)

    async def _current(self, name: str) -> TenantRecord:
        stored = await self.store.get(name)
        if stored is not None:
            return stored
        seeded = self.directory.seeds.get(name)
        if seeded is None:
            raise TenantNotFound(name)
        return seeded

    async def _has_usable_keys(self, name: str) -> bool:
        now, cursor = self.clock(), None
        while True:
            page, cursor = await self.keys.list(tenant=name, limit=MAX_PAGE, cursor=cursor)
            if any(record.is_usable(now) for record in page):
                return True
            if cursor is None:
                return False

    async def _applied(
        self, admin: str, action: str, before: TenantRecord | None, after: TenantRecord | None
    ) -> None:
        """Apply the change here at once, then audit it."""
        # A table that cannot be reloaded now is reloaded by the next poll.
        with contextlib.suppress(TenantStoreError):
            await self.directory.refresh()
        name = after.name if after is not None else before.name if before is not None else ""
        entry = AuditEntry(
            at=self.clock(), actor=admin, action=action, tenant=name, detail=_diff(before, after)
        )
        try:
            await self.audit.append(entry)
        except AuditLogError as exc:
            message = f"{action} of tenant {name!r} was done, but could not be audited: {exc}"
            raise AuditLogUnavailable(message) from exc
        logger.info("admin %s: %s tenant %s", admin, action, name)


def _quotas_over(body: KeyQuotas, base: Quotas) -> Quotas:
    given = body.to_quotas()
    values = {n: getattr(given if n in body.model_fields_set else base, n) for n in base.__slots__}
    return Quotas(**values)


def _diff(before: TenantRecord | None, after: TenantRecord | None) -> dict[str, str]:
    """The fields that changed, as JSON before and after (null for a side that is absent)."""
    parts = ("limits", "quotas", "models", "metadata")
    old = {} if before is None else tenant_doc(before)
    new = {} if after is None else tenant_doc(after)
    changed = [part for part in parts if old.get(part) != new.get(part)]
    detail = {"fields": ",".join(changed)}
    for side, doc in (("before", old), ("after", new)):
        shown = {part: doc[part] for part in changed} if doc else None
        detail[side] = json.dumps(shown, sort_keys=True, ensure_ascii=False)
    if before is not None:
        detail["source_before"] = before.source
    return detail
