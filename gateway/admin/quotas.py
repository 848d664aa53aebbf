"""The quota routes of the admin API: where a key's or a tenant's quotas stand now.

Reads only: no audit entry. A quota backend that cannot answer is a 503, like the
other stores' errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path

from gateway.admin.keys import Admin, KeyId
from gateway.admin.quota_schemas import QuotaOut, QuotaReport
from gateway.admin.schemas import Tenant
from gateway.keys.store import KeyNotFound, KeyStore
from gateway.limits.quota_admission import QuotaAdmissions
from gateway.limits.quotas import Counter, counters_for, owner_name
from gateway.principal import Principal, Quotas

TenantName = Annotated[Tenant, Path(description="The tenant.")]


@dataclass(frozen=True, slots=True)
class QuotaRoutes:
    store: KeyStore
    quotas: QuotaAdmissions | None

    def router(self) -> APIRouter:
        router = APIRouter(tags=["quotas"])
        router.add_api_route("/keys/{key_id}/quota", self.key_quota, methods=["GET"])
        router.add_api_route("/tenants/{tenant}/quota", self.tenant_quota, methods=["GET"])
        return router

    async def key_quota(self, key_id: KeyId, _: Admin) -> QuotaReport:
        """A key's own quotas in their current periods (its tenant's: the tenant route)."""
        record = await self.store.get(key_id)
        if record is None:
            raise KeyNotFound(key_id)
        principal = Principal(id=record.id, tenant=record.tenant, kind="key", limits=record.limits)
        counters = [c for c in counters_for(principal, None) if c.scope == "key"]
        quotas = await self._states(counters)
        return QuotaReport(scope="key", key_id=record.id, tenant=record.tenant, quotas=quotas)

    async def tenant_quota(self, tenant: TenantName, _: Admin) -> QuotaReport:
        """A tenant's quotas (stored or from the settings), shared by its keys and JWT subjects."""
        given = Quotas() if self.quotas is None else self.quotas.tenants.get(tenant, Quotas())
        owner = owner_name("tenant", tenant)
        counters = [Counter(owner, "tenant", tenant, *item) for item in given.items()]
        quotas = await self._states(counters)
        return QuotaReport(scope="tenant", key_id=None, tenant=tenant, quotas=quotas)

    async def _states(self, counters: list[Counter]) -> list[QuotaOut]:
        if self.quotas is None or not counters:
            return []
        admissions = self.quotas
        states = await admissions.backend.read(counters)
        return [
            QuotaOut.of(
                state,
                admissions.soft_threshold,
                admissions.past_soft_mark(state),
                datetime.fromtimestamp(state.window.end, UTC).isoformat().replace("+00:00", "Z"),
            )
            for state in states
        ]
