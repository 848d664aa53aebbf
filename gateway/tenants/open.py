"""The tenant store a gateway opens: beside its keys, in the same SQLite file or Redis."""

from __future__ import annotations

from gateway.settings import KeyStoreSettings
from gateway.tenants.sqlite_store import SqliteTenantStore
from gateway.tenants.store import TenantStore


async def open_tenant_store(settings: KeyStoreSettings) -> TenantStore:
    """The store for the key store's backend; the caller closes it."""
    if settings.backend == "redis":
        from gateway.tenants.redis_store import connect  # noqa: PLC0415 (optional backend)

        assert settings.redis_url is not None  # checked by the settings
        return connect(settings.redis_url.get_secret_value())
    return await SqliteTenantStore.open(settings.sqlite_path)  # creates its directory, 0700
