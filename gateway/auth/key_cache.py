"""API-key records cached per process, with a bounded lifetime whatever the change feed does.

The store's change feed (Redis pub/sub) evicts a changed key at once, but a
feed can lose notices (a silent reconnect, a half-open connection), so a
cached record is never trusted on the feed alone:

    age < refresh_after     served from memory: no store round trip
    age < max_stale         still served, while one background read refreshes it
    older, or never read    the request waits (at most `read_wait`) for a store read;
                            a store that cannot answer is a 503, never a stale 200

A record's age counts from the moment the read that produced it *started*: an
answer delayed by the network is no fresher than its question. A read that was
in flight when `forget()` ran is handed to its callers but never cached (the
generation counter), so a revocation cannot be undone by a slow read.

Every failed store call is reported to `on_store_error` (the gateway counts them in
`gateway_key_store_errors_total`): the log says so only when the store's state changes.

Trade-off: a larger `max_stale` rides out longer store outages on cached keys,
and delays a revocation by as much when the replica cannot hear the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from gateway.errors import GatewayError
from gateway.keys.records import KeyRecord
from gateway.keys.store import KeyStore, KeyStoreUnavailable
from gateway.tasks import cancel_and_wait

logger = logging.getLogger("gateway.auth")

# last_used_at is written at most this often per key, off the request path.
USE_RECORD_INTERVAL_S = 60.0
RESUBSCRIBE_DELAY_S = 1.0
# After a failed read, requests needing a read are refused at once for this long,
# instead of each trying the store again.
READ_RETRY_S = 0.25
# A flood of made-up ids must not grow memory without bound.
MAX_MISSES = 100_000

# What a failed store call was for: a key's record, the change feed, a key's last use.
StoreOperation = Literal["read", "feed", "record_use"]


def _uncounted(operation: StoreOperation) -> None:
    return None


class CredentialStoreUnavailable(GatewayError):
    status = 503
    error_type = "server_error"
    code = "auth_unavailable"


def _unavailable() -> CredentialStoreUnavailable:
    return CredentialStoreUnavailable(
        "API keys cannot be checked right now; retry shortly.", headers={"retry-after": "1"}
    )


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """Seconds; see the module docstring. `miss_ttl_s` is how long an unknown id stays unknown."""

    refresh_after_s: float = 1.0
    max_stale_s: float = 2.0
    read_wait_s: float = 1.0
    miss_ttl_s: float = 1.0

    def __post_init__(self) -> None:
        if min(self.refresh_after_s, self.read_wait_s, self.miss_ttl_s) <= 0:
            raise ValueError("key cache durations must be positive")
        if self.max_stale_s < self.refresh_after_s:
            raise ValueError("max_stale_s must be at least refresh_after_s")


@dataclass(frozen=True, slots=True)
class _Entry:
    record: KeyRecord | None  # None: the store has no such key
    read_at: float  # when the read that produced it started
    suspect: bool = False  # a notice may have been missed: refresh on next use


class KeyCache:
    """Key records by id: fresh for `refresh_after_s`, dropped when the store says they changed."""

    def __init__(
        self,
        store: KeyStore,
        policy: CachePolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_store_error: Callable[[StoreOperation], None] = _uncounted,
    ) -> None:
        self._store = store
        self._on_store_error = on_store_error
        self._policy = policy or CachePolicy()
        self._clock = clock
        self._records: dict[str, _Entry] = {}
        self._misses: dict[str, _Entry] = {}
        self._reads: dict[str, asyncio.Task[_Entry]] = {}
        self._generation = 0
        self._failed_at: float | None = None
        self._listener: asyncio.Task[None] | None = None
        self._recorded: dict[str, float] = {}
        self._writes: set[asyncio.Task[None]] = set()

    async def get(self, key_id: str) -> KeyRecord | None:
        """The key's record or None; CredentialStoreUnavailable when it cannot be known."""
        entry = self._records.get(key_id) or self._misses.get(key_id)
        if entry is not None:
            age = self._clock() - entry.read_at
            if entry.record is None:
                if 0 <= age < self._policy.miss_ttl_s:
                    return None
            elif 0 <= age < self._policy.refresh_after_s and not entry.suspect:
                return entry.record
            elif 0 <= age < self._policy.max_stale_s:
                if not self._backing_off():
                    self._read(key_id)  # in the background: this request keeps its answer
                return entry.record
        if self._backing_off() and key_id not in self._reads:
            raise _unavailable()
        return await self._wait(self._read(key_id))

    def _backing_off(self) -> bool:
        """Whether the store failed so recently that another read would only add load."""
        failed_at = self._failed_at
        return failed_at is not None and 0 <= self._clock() - failed_at < READ_RETRY_S

    def forget(self, key_id: str | None = None) -> None:
        """Drop one key (or every key); reads already in flight will not be cached."""
        self._generation += 1
        if key_id is None:
            self._records.clear()
            self._misses.clear()
            self._reads.clear()
        else:
            self._records.pop(key_id, None)
            self._misses.pop(key_id, None)
            self._reads.pop(key_id, None)

    def _read(self, key_id: str) -> asyncio.Task[_Entry]:
        """The one store read of this key in flight, started if there is none."""
        task = self._reads.get(key_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(key_id))
            self._reads[key_id] = task
            task.add_done_callback(lambda done: self._read_done(key_id, done))
        return task

    def _read_done(self, key_id: str, task: asyncio.Task[_Entry]) -> None:
        if self._reads.get(key_id) is task:
            del self._reads[key_id]
        if not task.cancelled():
            task.exception()  # retrieved: a background read's failure is logged in _load

    async def _load(self, key_id: str) -> _Entry:
        generation, started = self._generation, self._clock()
        try:
            record = await self._store.get(key_id)
        except KeyStoreUnavailable as exc:
            self._on_store_error("read")
            if self._failed_at is None:
                logger.warning("the key store cannot be read: %s", exc)
            self._failed_at = self._clock()
            raise
        if self._failed_at is not None:
            logger.warning("the key store can be read again")
            self._failed_at = None
        entry = _Entry(record, started)
        if generation == self._generation:
            self._remember(key_id, entry)
        return entry

    def _remember(self, key_id: str, entry: _Entry) -> None:
        if entry.record is not None:
            self._records[key_id] = entry
            self._misses.pop(key_id, None)
            return
        self._records.pop(key_id, None)
        if len(self._misses) >= MAX_MISSES:
            self._misses.clear()
        self._misses[key_id] = entry

    async def _wait(self, task: asyncio.Task[_Entry]) -> KeyRecord | None:
        try:
            # Shielded: a caller that gives up leaves the read to finish for the next one.
            entry = await asyncio.wait_for(asyncio.shield(task), self._policy.read_wait_s)
        except (TimeoutError, KeyStoreUnavailable) as exc:
            raise _unavailable() from exc
        if not 0 <= self._clock() - entry.read_at < self._policy.max_stale_s:
            raise _unavailable()  # an answer that took this long may predate a revocation
        return entry.record

    def _distrust(self) -> None:
        """Refresh every record on its next use: notices may have been missed."""
        for key_id, entry in list(self._records.items()):
            self._records[key_id] = _Entry(entry.record, entry.read_at, suspect=True)
        self._misses.clear()

    def note_use(self, key_id: str, when: datetime) -> None:
        """Move the key's last_used_at forward, in the background, once a minute at most."""
        now = self._clock()
        last = self._recorded.get(key_id)
        if last is not None and now - last < USE_RECORD_INTERVAL_S:
            return
        self._recorded[key_id] = now
        task = asyncio.get_running_loop().create_task(self._record_use(key_id, when))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _record_use(self, key_id: str, when: datetime) -> None:
        try:
            await self._store.record_use(key_id, when)
        except KeyStoreUnavailable as exc:
            self._recorded.pop(key_id, None)  # try again on the next use
            self._on_store_error("record_use")
            logger.warning("could not record the use of key %s: %s", key_id, exc)

    def start(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def stop(self) -> None:
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=2.0)
        tasks = [*self._reads.values(), *([self._listener] if self._listener else [])]
        self._reads.clear()
        await cancel_and_wait(tasks)

    async def _listen(self) -> None:
        while True:
            try:
                async with self._store.changes() as changes:
                    # Live again: anything cached before may have missed a notice.
                    self.forget()
                    async for key_id in changes:
                        self.forget(key_id)
            except KeyStoreUnavailable as exc:
                self._on_store_error("feed")
                logger.warning("key change feed lost (%s); retrying", exc)
            self._distrust()
            await asyncio.sleep(RESUBSCRIBE_DELAY_S)
