"""The key cache's own rules, on a fake clock against an in-memory store: how long an
unknown id stays unknown, how a failing store is backed off from and reported, when a
lost change feed forces a refresh, and how often a key's use is written.

The races and faults of a real Redis are in tests/test_revocation_faults.py.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import FrozenInstanceError, replace
from datetime import datetime

import pytest

from gateway.auth.key_cache import CachePolicy, CredentialStoreUnavailable, KeyCache, StoreOperation
from gateway.keys.format import generate
from gateway.keys.records import KeyRecord
from gateway.keys.store import KeyStoreUnavailable
from gateway.settings import KeyCacheSettings
from tests.test_revocation_faults import NOW, Clock, GatedStore, stored_key


class CountingStore(GatedStore):
    """Counts the `last_used_at` writes; its change feed can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.uses: list[str] = []
        self.feed_down = False

    async def record_use(self, key_id: str, when: datetime) -> None:
        self.uses.append(key_id)
        if self.failing:
            raise KeyStoreUnavailable("the store is down (test)")
        await super().record_use(key_id, when)

    @asynccontextmanager
    async def _lost_feed(self) -> AsyncIterator[AsyncIterator[str]]:
        raise KeyStoreUnavailable("the feed is down (test)")
        yield  # pragma: no cover - makes this an async generator

    def changes(self) -> AbstractAsyncContextManager[AsyncIterator[str]]:
        return self._lost_feed() if self.feed_down else super().changes()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_an_unknown_id_stays_unknown_for_a_second_then_is_read_again() -> None:
    async def main() -> None:
        store, clock = CountingStore(), Clock()
        cache = KeyCache(store, CachePolicy(), clock)  # the defaults: miss_ttl_s is 1 s
        key_id, other = generate().id, generate().id
        assert await cache.get(key_id) is None and await cache.get(other) is None
        assert store.reads == 2
        clock.now += 0.5
        assert await cache.get(key_id) is None and await cache.get(other) is None
        assert store.reads == 2  # both remembered as unknown: no read
        _, record = await stored_key(store)
        created = replace(record, id=key_id)
        await store.set_silently(created)
        clock.now += 0.5  # exactly miss_ttl_s: read again
        assert await cache.get(key_id) == created and store.reads == 3

    asyncio.run(main())


def test_a_failing_store_is_backed_off_from_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.auth")
    failures: list[StoreOperation] = []

    async def refused(cache: KeyCache, key_id: str, reads: int) -> None:
        with pytest.raises(CredentialStoreUnavailable):
            await cache.get(key_id)
        assert store.reads == reads

    store, clock = CountingStore(), Clock()
    cache = KeyCache(store, CachePolicy(), clock, on_store_error=failures.append)

    async def main() -> None:
        _, record = await stored_key(store)
        assert await cache.get(record.id) == record
        store.failing = True
        clock.now += 2.5  # past max_stale: the request needs a read
        await refused(cache, record.id, 2)
        assert [r.getMessage()[:28] for r in caplog.records] == ["the key store cannot be read"]
        await refused(cache, record.id, 2)  # at once, or within READ_RETRY_S: no read
        clock.now += 0.125
        await refused(cache, record.id, 2)
        clock.now += 0.125  # exactly READ_RETRY_S later: the store is tried again
        await refused(cache, record.id, 3)
        clock.now = 2 * clock.now + 0.125  # long after: tried again
        await refused(cache, record.id, 4)
        clock.now -= 0.125  # a clock that steps back does not prolong the back-off
        await refused(cache, record.id, 5)
        store.failing = False
        clock.now += 0.25
        assert await cache.get(record.id) == record and store.reads == 6
        clock.now += 0.125  # no back-off left after a good read
        assert await cache.get(generate().id) is None and store.reads == 7

    asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records]
    assert failures == ["read"] * 4
    assert len(messages) == 2, messages
    assert messages[0].startswith("the key store cannot be read")
    assert messages[1] == "the key store can be read again"


def test_a_policy_is_a_frozen_value_with_positive_bounds() -> None:
    for bad in ({"refresh_after_s": 0}, {"read_wait_s": 0}, {"miss_ttl_s": -0.5}):
        with pytest.raises(ValueError, match="positive"):
            CachePolicy(**bad)
    with pytest.raises(ValueError, match="max_stale_s"):
        CachePolicy(refresh_after_s=2.0, max_stale_s=1.0)
    policy = CachePolicy(refresh_after_s=1.5, max_stale_s=1.5)  # no stale period at all
    with pytest.raises(FrozenInstanceError):
        policy.max_stale_s = 60.0  # type: ignore[misc]
    assert not hasattr(policy, "__dict__")  # slotted
    settings = KeyCacheSettings()  # the gateway's defaults are the cache's own
    assert (CachePolicy().refresh_after_s, CachePolicy().max_stale_s) == (
        settings.refresh_after,
        settings.max_stale,
    )


def test_forget_drops_one_key_or_every_key() -> None:
    async def main() -> None:
        store, clock = CountingStore(), Clock()
        cache = KeyCache(store, CachePolicy(), clock)
        (_, one), (_, two) = await stored_key(store), await stored_key(store)
        assert await cache.get(one.id) == one and await cache.get(two.id) == two
        cache.forget(one.id)
        assert await cache.get(two.id) == two and store.reads == 2  # still cached
        assert await cache.get(one.id) == one and store.reads == 3
        cache.forget()
        assert await cache.get(one.id) == one and await cache.get(two.id) == two
        assert store.reads == 5

    asyncio.run(main())


def test_a_failed_background_read_leaves_no_unretrieved_exception() -> None:
    async def main() -> list[dict[str, object]]:
        reports: list[dict[str, object]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, context: reports.append(context))
        store, clock = CountingStore(), Clock()
        cache = KeyCache(store, CachePolicy(), clock)
        _, record = await stored_key(store)
        assert await cache.get(record.id) == record
        store.failing = True
        clock.now += 1.5  # stale: served while a background read (which fails) runs
        assert await cache.get(record.id) == record
        await settle()
        assert store.reads == 2
        gc.collect()
        return reports

    assert asyncio.run(main()) == []


def test_a_hung_read_is_given_up_after_a_second_by_default() -> None:
    async def main() -> None:
        store = CountingStore()
        cache = KeyCache(store)
        _, record = await stored_key(store)
        store.gate.clear()
        # The cache's own wait (1 s) ends before this outer one (1.5 s) does.
        with pytest.raises(CredentialStoreUnavailable):
            await asyncio.wait_for(cache.get(record.id), 1.5)
        store.gate.set()
        await cache.stop()

    asyncio.run(main())


def test_a_record_is_refreshed_and_then_dropped_at_its_bounds() -> None:
    async def main() -> None:
        store, clock = CountingStore(), Clock()
        cache = KeyCache(store, CachePolicy(refresh_after_s=1.0, max_stale_s=2.0), clock)
        _, record = await stored_key(store)
        assert await cache.get(record.id) == record
        revoked = replace(record, revoked_at=NOW)
        await store.set_silently(revoked)
        clock.now += 1.0  # exactly refresh_after_s: served, and read again behind it
        assert await cache.get(record.id) == record
        await settle()
        assert store.reads == 2
        await store.set_silently(replace(revoked, name="renamed"))
        clock.now += 2.0  # exactly max_stale_s after that read: wait for the store's answer
        assert await cache.get(record.id) == replace(revoked, name="renamed")
        assert store.reads == 3

    asyncio.run(main())


def test_an_age_the_clock_cannot_vouch_for_is_read_again() -> None:
    """A clock that stepped back, or jumped far ahead, never makes an entry look fresh."""

    async def main() -> None:
        store, clock = CountingStore(), Clock()
        cache = KeyCache(store, CachePolicy(refresh_after_s=1.0, max_stale_s=2.0), clock)
        _, record = await stored_key(store)
        unknown = generate().id
        assert await cache.get(record.id) == record and await cache.get(unknown) is None
        clock.now -= 0.5
        assert await cache.get(record.id) == record and await cache.get(unknown) is None
        assert store.reads == 4  # both waited for a read
        clock.now = 2 * clock.now + 0.5  # an age of 1000.5 s, not 0.5
        assert await cache.get(record.id) == record and await cache.get(unknown) is None
        assert store.reads == 6
        store.gate.clear()
        clock.now += 2.5
        waiting = asyncio.create_task(cache.get(record.id))
        while store.reads == 6:
            await asyncio.sleep(0)
        clock.now -= 0.5  # the answer would predate its own question
        store.gate.set()
        with pytest.raises(CredentialStoreUnavailable):
            await waiting
        store.gate.clear()
        waiting = asyncio.create_task(cache.get(record.id))
        while store.reads == 7:
            await asyncio.sleep(0)
        clock.now = 2 * clock.now + 0.5  # the answer took 1000 s, not 0.5
        store.gate.set()
        with pytest.raises(CredentialStoreUnavailable):
            await waiting

    asyncio.run(main())


def test_an_answer_that_took_longer_than_the_staleness_bound_is_refused() -> None:
    async def main() -> None:
        store, clock = CountingStore(), Clock()
        cache = KeyCache(store, CachePolicy(refresh_after_s=1.0, max_stale_s=2.0), clock)
        _, record = await stored_key(store)
        store.gate.clear()
        waiting = asyncio.create_task(cache.get(record.id))
        while store.reads == 0:
            await asyncio.sleep(0)
        clock.now += 2.0  # max_stale_s: the record may have been revoked since the read started
        store.gate.set()
        with pytest.raises(CredentialStoreUnavailable):
            await waiting

    asyncio.run(main())


def test_a_lost_change_feed_makes_every_cached_record_refresh() -> None:
    async def main() -> None:
        store, clock = CountingStore(), Clock()
        failures: list[StoreOperation] = []
        cache = KeyCache(store, CachePolicy(), clock, on_store_error=failures.append)
        _, record = await stored_key(store)
        assert await cache.get(record.id) == record
        revoked: KeyRecord = replace(record, revoked_at=NOW)
        await store.set_silently(revoked)  # the notice is lost with the feed
        store.feed_down = True
        cache.start()
        while not failures:
            await asyncio.sleep(0)
        await asyncio.sleep(0.2)  # the feed is retried a second later, not at once
        assert failures == ["feed"]
        # Fresh by age, but the feed may have missed a change: served once, refreshed.
        assert await cache.get(record.id) == record
        await settle()
        assert store.reads == 2 and await cache.get(record.id) == revoked
        await cache.stop()

    asyncio.run(main())


def test_a_keys_use_is_written_once_a_minute() -> None:
    async def main() -> None:
        store, clock = CountingStore(), Clock()
        cache = KeyCache(store, CachePolicy(), clock)
        _, record = await stored_key(store)
        writes = []
        for step in (0.0, 30.0, 29.5, 0.5, 59.5, 0.5, 1150.0):
            clock.now += step
            cache.note_use(record.id, NOW)
            await settle()
            writes.append(len(store.uses))
        assert writes == [1, 1, 1, 2, 2, 3, 4]  # at 0 s, 60 s, 120 s and 1270 s
        assert set(store.uses) == {record.id}
        await cache.stop()

    asyncio.run(main())


def test_a_use_that_could_not_be_written_is_written_on_the_next_use() -> None:
    async def main() -> None:
        store, clock = CountingStore(), Clock()
        failures: list[StoreOperation] = []
        cache = KeyCache(store, CachePolicy(), clock, on_store_error=failures.append)
        _, record = await stored_key(store)
        store.failing = True
        cache.note_use(record.id, NOW)
        await settle()
        assert failures == ["record_use"]
        store.failing = False
        clock.now += 1.0  # within the minute, but the last write failed
        cache.note_use(record.id, NOW)
        await cache.stop()
        assert len(store.uses) == 2
        stored = await store.get(record.id)
        assert stored is not None and stored.last_used_at == NOW

    asyncio.run(main())


def test_a_flood_of_unknown_ids_is_bounded_at_100_000() -> None:
    async def main() -> None:
        store = CountingStore()
        cache = KeyCache(store, CachePolicy(miss_ttl_s=60), Clock())
        ids = [f"{n:016d}" for n in range(100_001)]
        for key_id in ids[:100_000]:
            await cache.get(key_id)
        assert await cache.get(ids[0]) is None and store.reads == 100_000  # still remembered
        await cache.get(ids[100_000])  # one more: the remembered misses are dropped
        assert await cache.get(ids[0]) is None and store.reads == 100_002

    asyncio.run(main())
