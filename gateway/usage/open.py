"""The usage store a gateway opens: beside its keys, in the same SQLite file or Redis."""

from __future__ import annotations

from gateway.settings import KeyStoreSettings
from gateway.usage.sqlite import SqliteUsageStore
from gateway.usage.store import UsageStore


async def open_usage_store(settings: KeyStoreSettings) -> UsageStore:
    """The store for the key store's backend; the caller closes it."""
    if settings.backend == "redis":
        from gateway.usage.redis_store import connect  # noqa: PLC0415 (optional backend)

        assert settings.redis_url is not None  # checked by the settings
        return connect(settings.redis_url.get_secret_value())
    return await SqliteUsageStore.open(settings.sqlite_path)  # creates its directory, 0700
