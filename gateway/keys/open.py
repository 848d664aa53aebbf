"""The key store a gateway opens: an SQLite file of its own, or Redis shared by replicas."""

from __future__ import annotations

from gateway.keys.sqlite import SqliteKeyStore
from gateway.keys.store import KeyStore
from gateway.settings import KeyStoreSettings


async def open_key_store(settings: KeyStoreSettings) -> KeyStore:
    """The store for the configured backend; the caller closes it."""
    if settings.backend == "redis":
        from gateway.keys.redis_store import RedisKeyStore  # noqa: PLC0415 (optional backend)

        assert settings.redis_url is not None  # checked by the settings
        return RedisKeyStore.connect(
            settings.redis_url.get_secret_value(), ping_interval_s=settings.redis_ping_interval
        )
    return await SqliteKeyStore.open(settings.sqlite_path)  # creates its directory, 0700
