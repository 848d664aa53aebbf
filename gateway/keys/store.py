"""The `KeyStore` seam, its errors, and an in-memory store for tests and embedding.

    KeyStoreError             the store could not do what was asked
    ├── KeyStoreUnavailable   not now: Redis down, a read-only or full disk, a locked file
    ├── KeyNotFound           no key with that id
    └── KeyExists             `create` with an id that is taken

Stores map their driver's errors to these at their boundary (`raise ... from
exc`), and a failed write leaves every stored key as it was. The admin API turns
them into responses; the request path treats `KeyStoreUnavailable` by setting.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from datetime import datetime
from typing import Protocol, TypeAlias

from gateway.keys.records import KeyChanges, KeyRecord

MAX_PAGE = 1000

KeyPage: TypeAlias = tuple[list[KeyRecord], str | None]


class KeyStoreError(Exception):
    """Base of the key store errors; the message is fit to show an operator."""


class KeyStoreUnavailable(KeyStoreError):
    """The backend cannot serve the operation now; nothing was changed."""


class KeyNotFound(KeyStoreError):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"no API key with id {key_id!r}")
        self.key_id = key_id


class KeyExists(KeyStoreError):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"an API key with id {key_id!r} already exists")
        self.key_id = key_id


class KeyStore(Protocol):
    """Where key records live. Every method may raise `KeyStoreUnavailable`.

    Records hold only secret hashes; a store never sees a plaintext secret.
    Listing is ordered by key id; the cursor is opaque to callers.
    """

    async def create(self, record: KeyRecord) -> None:
        """Store a new record; `KeyExists` if its id is taken. Notifies `changes`."""

    async def get(self, key_id: str) -> KeyRecord | None:
        """The record, or None. Revoked and expired records are returned too."""

    async def list(
        self, *, tenant: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> KeyPage:
        """Up to `limit` records (1..1000) after `cursor`, of one tenant or all.

        Returns the page and the cursor of the next one, None when there is no more.
        """

    async def update(self, key_id: str, changes: KeyChanges) -> KeyRecord:
        """Apply `changes` atomically and return the new record; `KeyNotFound` if absent.

        Notifies `changes`: revocation and rotation must reach every replica.
        """

    async def record_use(self, key_id: str, when: datetime) -> None:
        """Move `last_used_at` forward to `when` (never back). An unknown id is ignored.

        Cheap but still a write: callers should throttle it (say once a minute per
        key), not call it per request. It does not notify `changes`.
        """

    def changes(self) -> AbstractAsyncContextManager[AsyncIterator[str]]:
        """Subscribe to the ids of keys created or updated, for cache invalidation.

        The subscription is live when the context is entered, so nothing written
        after that is missed. If iteration raises `KeyStoreUnavailable`, changes
        may have been lost: drop every cached record and subscribe again.
        """

    async def close(self) -> None:
        """Release the store's connections; idempotent."""


def check_page(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"a page holds 1 to {MAX_PAGE} keys, not {limit}")


class LocalChanges:
    """A change feed within one process: subscribers hear this store object's writes.

    What single-node stores offer: writes made by another process (or another
    store object on the same file) are not heard.
    """

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[str]] = set()

    def publish(self, key_id: str) -> None:
        for queue in self._queues:
            queue.put_nowait(key_id)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[str]]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._queues.add(queue)
        try:
            yield _drain(queue)
        finally:
            self._queues.discard(queue)


async def _drain(queue: asyncio.Queue[str]) -> AsyncIterator[str]:
    while True:
        yield await queue.get()


class MemoryKeyStore:
    """A `KeyStore` in a dict: for tests of the code above the store, and nothing durable."""

    def __init__(self) -> None:
        self._records: dict[str, KeyRecord] = {}
        self._changes = LocalChanges()

    async def create(self, record: KeyRecord) -> None:
        if record.id in self._records:
            raise KeyExists(record.id)
        self._records[record.id] = record
        self._changes.publish(record.id)

    async def get(self, key_id: str) -> KeyRecord | None:
        return self._records.get(key_id)

    async def list(
        self, *, tenant: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> KeyPage:
        check_page(limit)
        ids = sorted(
            key_id
            for key_id, record in self._records.items()
            if (tenant is None or record.tenant == tenant) and (cursor is None or key_id > cursor)
        )
        page = [self._records[key_id] for key_id in ids[:limit]]
        return page, (page[-1].id if len(ids) > limit else None)

    async def update(self, key_id: str, changes: KeyChanges) -> KeyRecord:
        record = self._records.get(key_id)
        if record is None:
            raise KeyNotFound(key_id)
        self._records[key_id] = updated = changes.apply(record)
        self._changes.publish(key_id)
        return updated

    async def record_use(self, key_id: str, when: datetime) -> None:
        record = self._records.get(key_id)
        if record is not None and (record.last_used_at is None or record.last_used_at < when):
            self._records[key_id] = replace(record, last_used_at=when)

    def changes(self) -> AbstractAsyncContextManager[AsyncIterator[str]]:
        return self._changes.subscribe()

    async def close(self) -> None:
        return None
