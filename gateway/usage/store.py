"""The `UsageStore` seam, its errors, and an in-memory store for tests and embedding.

    UsageStoreError             the store could not do what was asked
    └── UsageStoreUnavailable   not now: Redis down, a read-only or full disk

Stores keep one row of counts per principal, tenant, model and UTC day, and
only ever add to it. Writes come in batches from the `UsageRecorder`, off the
request path; reads serve the admin API. Three stores keep the same contract:
`MemoryUsageStore`, `SqliteUsageStore` (a table beside the keys) and
`RedisUsageStore` (hashes shared by every gateway replica).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import date
from typing import Protocol

from gateway.usage.records import BatchId, UsageCounts, UsageKey


class UsageStoreError(Exception):
    """Base of the usage store errors; the message is fit to show an operator."""


class UsageStoreUnavailable(UsageStoreError):
    """The store cannot be written or read now; a batch that failed can be retried."""


class UsageStore(Protocol):
    """Where usage counts add up. Every method may raise `UsageStoreUnavailable`."""

    async def add(
        self, batch: Mapping[UsageKey, UsageCounts], batch_id: BatchId | None = None
    ) -> None:
        """Add every row of `batch` to the stored counts, all or nothing.

        A batch that raised may be sent again with the same `batch_id`: it is applied
        at most once, even when the first attempt was applied and only its answer lost.
        A writer sends its batches in `sequence` order and never one before the last
        is settled, so a store may keep only each writer's last applied sequence.
        """

    async def by_principal(
        self, principal: str, since: date | None = None, until: date | None = None
    ) -> dict[str, UsageCounts]:
        """Totals per model over the principal's days in [since, until] (either end open)."""

    async def by_tenant(
        self, tenant: str, since: date | None = None, until: date | None = None
    ) -> dict[str, UsageCounts]:
        """Totals per model over the tenant's days in [since, until] (either end open)."""

    async def rows(
        self, since: date | None = None, until: date | None = None
    ) -> list[tuple[UsageKey, UsageCounts]]:
        """Every stored row of the days in [since, until] (either end open), as `add`
        would take it back: what an export carries and a usage report sums."""

    async def close(self) -> None:
        """Release the store's connections; idempotent."""


def day_bounds(since: date | None, until: date | None) -> tuple[date, date]:
    """The inclusive range of days a read covers, open ends made concrete."""
    return since or date.min, until or date.max


def totals_per_model(rows: Iterable[tuple[str, UsageCounts]]) -> dict[str, UsageCounts]:
    """Sum (model, counts) rows into fresh counts per model."""
    totals: dict[str, UsageCounts] = {}
    for model, counts in rows:
        totals.setdefault(model, UsageCounts()).add(counts)
    return totals


class MemoryUsageStore:
    """A `UsageStore` in a dict: for tests of the code above the store, nothing durable."""

    def __init__(self) -> None:
        self._rows: dict[UsageKey, UsageCounts] = {}

    async def add(
        self, batch: Mapping[UsageKey, UsageCounts], batch_id: BatchId | None = None
    ) -> None:
        # Nothing here can fail after applying, so `batch_id` needs no record.
        # No await in between: no other task sees half a batch. Counts are copied,
        # because the caller's objects are mutable and may be reused.
        for key, counts in batch.items():
            self._rows.setdefault(key, UsageCounts()).add(counts)

    async def by_principal(
        self, principal: str, since: date | None = None, until: date | None = None
    ) -> dict[str, UsageCounts]:
        return self._totals(lambda key: key.principal == principal, since, until)

    async def by_tenant(
        self, tenant: str, since: date | None = None, until: date | None = None
    ) -> dict[str, UsageCounts]:
        return self._totals(lambda key: key.tenant == tenant, since, until)

    async def rows(
        self, since: date | None = None, until: date | None = None
    ) -> list[tuple[UsageKey, UsageCounts]]:
        first, last = day_bounds(since, until)
        return [
            (key, UsageCounts(**_fields(counts)))
            for key, counts in self._rows.items()
            if first <= key.day <= last
        ]

    async def close(self) -> None:
        return None

    def _totals(
        self, wanted: Callable[[UsageKey], bool], since: date | None, until: date | None
    ) -> dict[str, UsageCounts]:
        first, last = day_bounds(since, until)
        return totals_per_model(
            (key.model, counts)
            for key, counts in self._rows.items()
            if wanted(key) and first <= key.day <= last
        )


def _fields(counts: UsageCounts) -> dict[str, int]:
    return {
        "requests": counts.requests,
        "prompt_tokens": counts.prompt_tokens,
        "completion_tokens": counts.completion_tokens,
        "estimated_requests": counts.estimated_requests,
    }
