"""Usage counted in memory on the request path, written to a `UsageStore` in batches.

The request path only adds to a dict. A background task swaps the dict for an
empty one every interval and writes the old one as one batch, so counts recorded
while a write is in flight land in the next batch. Each batch carries a `BatchId`
(this recorder's random id and a sequence number). A batch that failed is kept
as it is and sent again, with the same id, before anything newer: the store
applies an id at most once, so a retry neither loses nor repeats a count, even
when the failed attempt had in fact been applied and only its answer was lost.
Pending counts live only in this process until written: `stop` makes a final
attempt, and logs what that could not write as dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime

from gateway.usage.records import BatchId, TokenUsage, UsageCounts, UsageKey
from gateway.usage.store import UsageStore, UsageStoreError

logger = logging.getLogger("gateway.usage")

WARN_EVERY_S = 60.0

Batch = dict[UsageKey, UsageCounts]
MAX_KEYS = 10_000


def utc_today() -> date:
    return datetime.now(UTC).date()


class UsageRecorder:
    """Collects usage in memory and writes it to the store in batches, off the request path."""

    def __init__(
        self,
        store: UsageStore | None = None,
        *,
        interval_s: float = 1.0,
        clock: Callable[[], date] | None = None,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._timer = timer  # paces the warnings
        self._interval_s = interval_s
        self._clock = clock or utc_today
        self._pending: Batch = {}
        # (principal, tenant, model) as given -> their row's key today (see `_key`).
        self._keys: dict[tuple[str, str, str], UsageKey] = {}
        self._writer = uuid.uuid4().hex
        self._sequence = 0
        self._unsent: tuple[BatchId, Batch] | None = None  # failed, to be sent again as is
        self._writing = asyncio.Lock()  # one batch in flight at a time
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._warned_at: float | None = None

    def record(
        self,
        principal: str,
        tenant: str,
        model: str,
        usage: TokenUsage | None,
        *,
        estimated: bool = False,
    ) -> None:
        """Count one request and its tokens; `estimated`: the tokens are the gateway's
        reservation, because the replica reported no usage.

        Called on the request path: no I/O, no await, nothing that can raise.
        """
        key = self._key(principal, tenant, model, self._clock())
        counts = self._pending.get(key)
        if counts is None:
            counts = self._pending[key] = UsageCounts()
        counts.requests += 1
        counts.estimated_requests += estimated
        if usage is not None:  # a negative count from a confused replica is not taken off
            counts.prompt_tokens += max(usage.prompt_tokens, 0)
            counts.completion_tokens += max(usage.completion_tokens, 0)

    def _key(self, principal: str, tenant: str, model: str, day: date) -> UsageKey:
        """The row's key, made once per principal, model and day rather than per request."""
        names = (principal, tenant, model)
        key = self._keys.get(names)
        if key is None or key.day != day:
            if len(self._keys) >= MAX_KEYS:
                self._keys.clear()
            key = UsageKey(_storable(principal), _storable(tenant), _storable(model), day)
            self._keys[names] = key
        return key

    @property
    def pending(self) -> int:
        """Rows waiting to be written (a failed batch's and the newer counts'); they
        grow while the store is down."""
        return len(self._pending) + (0 if self._unsent is None else len(self._unsent[1]))

    def start(self, store: UsageStore | None = None) -> None:
        """Start writing every `interval_s`; call from a running event loop. STORE, when
        given, is where to write: a recorder may be built before its store is open."""
        if self._task is not None:
            raise RuntimeError("the usage recorder is already started")
        if store is not None:
            self._store = store
        self._stopping.clear()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-recorder")

    async def flush(self) -> None:
        """Write what is pending now. `UsageStoreError` if the store refused it: a batch
        that failed is sent again, with its id, at the next flush, before newer counts."""
        async with self._writing:
            if self._unsent is not None:
                await self._send(*self._unsent)
            batch, self._pending = self._pending, {}
            if batch:
                self._sequence += 1
                await self._send(BatchId(self._writer, self._sequence), batch)

    async def _send(self, batch_id: BatchId, batch: Batch) -> None:
        self._unsent = (batch_id, batch)
        if self._store is None:
            raise UsageStoreError("the usage store is not open")
        try:
            await self._store.add(batch, batch_id)
        except asyncio.CancelledError:
            # Not kept: a cancelled write may have been applied (a SQLite thread runs
            # to the end), and only Redis would recognise the id.
            self._unsent = None
            raise
        self._unsent = None

    async def stop(self) -> None:
        """Stop the task (if started), letting a write in flight finish, then make a
        final attempt; what fails then is logged, not raised, so shutdown goes on."""
        if self._task is not None:
            self._stopping.set()
            await self._task
            self._task = None
        try:
            await self.flush()
        except UsageStoreError as exc:
            logger.error(
                "usage not written at shutdown, %d rows of counts dropped: %s",
                self.pending,
                exc,
            )

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval_s)
            if not self._stopping.is_set():  # else `stop` makes the last attempt
                await self._flush_and_report()

    async def _flush_and_report(self) -> None:
        try:
            await self.flush()
        # The outermost frame of a background task: any failure, even a store's bug,
        # is reported and retried, because a dead task would stop all usage writes.
        except Exception as exc:
            self._failed(exc)
        else:
            if self._failures:
                logger.info("usage writes resumed after %d failed attempts", self._failures)
                self._failures = 0

    def _failed(self, exc: Exception) -> None:
        self._failures += 1
        now = self._timer()
        if self._warned_at is not None and now - self._warned_at < WARN_EVERY_S:
            return
        self._warned_at = now
        logger.warning(
            "could not write usage (%d rows pending, retrying every %gs): %s",
            self.pending,
            self._interval_s,
            exc,
            exc_info=not isinstance(exc, UsageStoreError),
        )


def _storable(text: str) -> str:
    """TEXT as UTF-8 can hold it: a lone surrogate (from a JWT claim, say) would make
    every write of the batch fail, for ever."""
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")
