"""The tenant table of a gateway process: the settings' tenants, overlaid by the store's.

The request path reads only the in-memory `TenantTable`, never the store. A
background task reads the store's version every `poll_interval_s` (one cheap
read) and, when it moved, reloads every tenant and swaps in a new table: so a
change made through the admin API of any replica applies on every replica
within about one poll, and at once on the replica that made it (`refresh`).

A tenant in the store wins over the settings entry of the same name. When the
store cannot be read the last table stays in force (logged at most every
LOG_EVERY_S); the settings' tenants apply from the start, before any read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from gateway.principal import Limits, Principal, Quotas
from gateway.tasks import cancel_and_wait
from gateway.tenants.records import TenantRecord
from gateway.tenants.store import TenantStore, TenantStoreError

logger = logging.getLogger("gateway.tenants")
POLL_INTERVAL_S = 0.25
LOG_EVERY_S = 30.0
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class TenantTable:
    """One consistent view of every tenant, in the shapes the request path reads."""

    records: Mapping[str, TenantRecord]
    limits: Mapping[str, Limits]
    quotas: Mapping[str, Quotas]
    max_batch: Mapping[str, int]
    max_tokens: Mapping[str, int]
    models: Mapping[str, frozenset[str]]

    @classmethod
    def of(cls, records: Mapping[str, TenantRecord]) -> TenantTable:
        limits = {name: record.limits for name, record in records.items()}
        return cls(
            records=dict(records),
            limits=limits,
            quotas={n: r.quotas for n, r in records.items() if r.quotas.items()},
            max_batch={n: v for n, r in records.items() if (v := r.limits.max_batch) is not None},
            max_tokens={n: v for n, r in records.items() if (v := r.limits.max_tokens) is not None},
            models={n: r.models for n, r in records.items() if r.models is not None},
        )


class TableView(Mapping[str, V], Generic[V]):
    """A read-only mapping that always shows one part of the directory's current table,
    for collaborators built before the store was open and kept for the process' life."""

    def __init__(self, part: Callable[[], Mapping[str, V]]) -> None:
        self._part = part

    def __getitem__(self, name: str) -> V:
        return self._part()[name]

    def get(self, name: str, default: V | None = None) -> V | None:  # type: ignore[override]
        return self._part().get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._part())

    def __len__(self) -> int:
        return len(self._part())


class TenantDirectory:
    """Owns the process' tenant table and the task that keeps it in step with the store."""

    def __init__(
        self,
        seeds: Mapping[str, TenantRecord],
        *,
        poll_interval_s: float = POLL_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seeds = dict(seeds)
        self.table = TenantTable.of(self.seeds)
        self._poll_interval_s = poll_interval_s
        self._clock = clock
        self._store: TenantStore | None = None
        self._version: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_log = -math.inf
        self.limits: Mapping[str, Limits] = TableView(lambda: self.table.limits)
        self.quotas: Mapping[str, Quotas] = TableView(lambda: self.table.quotas)
        self.max_batch: Mapping[str, int] = TableView(lambda: self.table.max_batch)
        self.max_tokens: Mapping[str, int] = TableView(lambda: self.table.max_tokens)

    async def open(self, store: TenantStore) -> None:
        """Load the store's tenants (a store that cannot answer now is retried by the
        poll) and start polling."""
        self._store = store
        with contextlib.suppress(TenantStoreError):
            await self.refresh()
        self._task = asyncio.create_task(self._poll(), name="tenant-directory")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

    async def refresh(self) -> None:
        """Reload the table if the store's version moved; `TenantStoreError` if unreadable."""
        if self._store is None:
            return
        version = await self._store.version()
        if version == self._version:
            return
        stored = await self._store.all()
        self.table = TenantTable.of(self.merged(stored))
        self._version = version

    def merged(self, stored: list[TenantRecord]) -> dict[str, TenantRecord]:
        """The settings' tenants with the store's laid over them, by name."""
        records = dict(self.seeds)
        records.update((record.name, record) for record in stored)
        return dict(sorted(records.items()))

    def restrict(self, principal: Principal) -> Principal:
        """The principal limited to its tenant's allowed models as well as its own."""
        allowed = self.table.models.get(principal.tenant)
        if allowed is None:
            return principal
        own = principal.models
        return replace(principal, models=allowed if own is None else own & allowed)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval_s)
            try:
                await self.refresh()
            except (TenantStoreError, ValueError, TypeError, KeyError) as exc:
                now = self._clock()
                if now - self._last_log >= LOG_EVERY_S:
                    self._last_log = now
                    logger.warning("tenant store unreadable, the last tenants stay: %s", exc)
