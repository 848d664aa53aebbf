"""The `TenantStore` seam and its errors.

    TenantStoreError             the store could not do what was asked
    ├── TenantStoreUnavailable   not now: Redis down, a read-only or full disk
    ├── TenantNotFound           no tenant of that name in the store
    └── TenantExists             `create` with a name that is taken

Every write moves the store's `version` forward in the same transaction, so a
replica that polls `version` (one cheap read) learns of any change without
reading the tenants themselves.
"""

from __future__ import annotations

from typing import Protocol

from gateway.tenants.records import TenantRecord


class TenantStoreError(Exception):
    """Base of the tenant store errors; the message is fit to show an operator."""


class TenantStoreUnavailable(TenantStoreError):
    """The backend cannot serve the operation now; nothing was changed."""


class TenantNotFound(TenantStoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no tenant named {name!r}")
        self.name = name


class TenantExists(TenantStoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"a tenant named {name!r} already exists")
        self.name = name


class TenantStore(Protocol):
    """Where tenant records live, beside the keys. Every method may raise
    `TenantStoreUnavailable`."""

    async def all(self) -> list[TenantRecord]:
        """Every stored tenant, by name."""

    async def get(self, name: str) -> TenantRecord | None: ...

    async def create(self, record: TenantRecord) -> None:
        """Store a new tenant; `TenantExists` if the name is taken."""

    async def replace(self, record: TenantRecord) -> None:
        """Overwrite a stored tenant; `TenantNotFound` if absent."""

    async def delete(self, name: str) -> None:
        """`TenantNotFound` if absent."""

    async def version(self) -> int:
        """A number that grows with every write; equal numbers mean equal contents."""

    async def close(self) -> None: ...


class MemoryTenantStore:
    """A `TenantStore` in a dict: for tests and embedding, nothing durable."""

    def __init__(self) -> None:
        self._records: dict[str, TenantRecord] = {}
        self._version = 0

    async def all(self) -> list[TenantRecord]:
        return [self._records[name] for name in sorted(self._records)]

    async def get(self, name: str) -> TenantRecord | None:
        return self._records.get(name)

    async def create(self, record: TenantRecord) -> None:
        if record.name in self._records:
            raise TenantExists(record.name)
        self._write(record)

    async def replace(self, record: TenantRecord) -> None:
        if record.name not in self._records:
            raise TenantNotFound(record.name)
        self._write(record)

    async def delete(self, name: str) -> None:
        if self._records.pop(name, None) is None:
            raise TenantNotFound(name)
        self._version += 1

    async def version(self) -> int:
        return self._version

    async def close(self) -> None:
        return None

    def _write(self, record: TenantRecord) -> None:
        self._records[record.name] = record
        self._version += 1
