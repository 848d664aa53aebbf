"""The three stores an export reads and an import fills, opened from the settings.

They are opened directly, not through a gateway: a migration runs while the
gateways are stopped, or before new ones start. They are opened as a gateway
opens them: an older schema or layout is migrated, a newer one refused. An
export needs an existing SQLite file: a missing one is an error, not a new
empty store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from gateway.admin.audit import AuditLog, SqliteAuditLog
from gateway.keys.sqlite import SqliteKeyStore
from gateway.keys.store import KeyStore
from gateway.settings import KeyStoreSettings
from gateway.tenants.open import open_tenant_store
from gateway.tenants.store import TenantStore
from gateway.transfer.jsonl import TransferError
from gateway.usage.sqlite import SqliteUsageStore
from gateway.usage.store import UsageStore


class ExportableUsage(UsageStore, Protocol):
    """A usage store an export reads whole, through `rows()`."""


@dataclass(frozen=True, slots=True)
class Stores:
    keys: KeyStore
    usage: ExportableUsage
    audit: AuditLog
    tenants: TenantStore
    description: str  # for messages: never the Redis URL, which may hold a password


def describe(settings: KeyStoreSettings) -> str:
    if settings.backend == "redis":
        return "the Redis store of auth.key_store.redis_url"
    return f"the SQLite store {settings.sqlite_path}"


@asynccontextmanager
async def open_stores(settings: KeyStoreSettings, *, must_exist: bool) -> AsyncIterator[Stores]:
    """The key, usage and audit stores of the settings, each closed on exit (or when the
    next one fails to open)."""
    async with AsyncExitStack() as stack:
        if settings.backend == "redis":
            keys, usage, audit = await _redis(settings, stack)
        else:
            keys, usage, audit = await _sqlite(settings, must_exist, stack)
        tenants = await open_tenant_store(settings)
        stack.push_async_callback(tenants.close)
        yield Stores(keys, usage, audit, tenants, describe(settings))


async def _sqlite(
    settings: KeyStoreSettings, must_exist: bool, stack: AsyncExitStack
) -> tuple[KeyStore, ExportableUsage, AuditLog]:
    path = settings.sqlite_path
    if must_exist and not path.is_file():
        raise TransferError(f"there is no SQLite store at {path} (auth.key_store.sqlite_path)")
    # The key store first: it refuses a file of a newer schema before anything else opens it.
    keys = await SqliteKeyStore.open(path)
    stack.push_async_callback(keys.close)
    usage = await SqliteUsageStore.open(path)
    stack.push_async_callback(usage.close)
    audit = await SqliteAuditLog.open(path)
    stack.push_async_callback(audit.close)
    return keys, usage, audit


async def _redis(
    settings: KeyStoreSettings, stack: AsyncExitStack
) -> tuple[KeyStore, ExportableUsage, AuditLog]:
    # Imported here: a gateway without Redis never imports the Redis client.
    from gateway.admin.audit_redis import RedisAuditLog  # noqa: PLC0415
    from gateway.keys.redis_store import RedisKeyStore  # noqa: PLC0415
    from gateway.usage.redis_store import connect  # noqa: PLC0415

    assert settings.redis_url is not None  # checked by the settings
    url = settings.redis_url.get_secret_value()
    keys = RedisKeyStore.connect(url)
    stack.push_async_callback(keys.close)
    await keys.check_layout()  # unlike a gateway's start, Redis must be up for this
    usage = connect(url)
    stack.push_async_callback(usage.close)
    audit = RedisAuditLog.connect(url)
    stack.push_async_callback(audit.close)
    return keys, usage, audit
