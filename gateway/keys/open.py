"""The key store a gateway opens: an SQLite file of its own, or Redis shared by replicas."""

from __future__ import annotations

from gateway.keys.sqlite import SqliteKeyStore
from gateway.keys.store import KeyStore, KeyStoreUnavailable
from gateway.settings import KeyStoreSettings


async def open_key_store(settings: KeyStoreSettings) -> KeyStore:
    """The store for the configured backend, its schema or layout version checked (an
    older one migrated, a newer one refused with `KeyStoreError`); the caller closes it."""
    if settings.backend == "redis":
        from gateway.keys.redis_store import RedisKeyStore  # noqa: PLC0415 (optional backend)

        assert settings.redis_url is not None  # checked by the settings
        store = RedisKeyStore.connect(
            settings.redis_url.get_secret_value(), ping_interval_s=settings.redis_ping_interval
        )
        try:
            # A newer layout stops the start here; a Redis that is down is checked later.
            await store.check_layout()
        except KeyStoreUnavailable:
            pass
        except BaseException:
            await store.close()
            raise
        return store
    return await SqliteKeyStore.open(settings.sqlite_path)  # creates its directory, 0700
