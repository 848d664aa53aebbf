"""The usage recorder: counted on the request path, written in batches, never lost or doubled."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import pytest

from gateway.usage.recorder import UsageRecorder
from gateway.usage.records import BatchId, TokenUsage, UsageCounts, UsageKey
from gateway.usage.redis_store import RedisUsageStore, connect
from gateway.usage.sqlite import SqliteUsageStore
from gateway.usage.store import MemoryUsageStore, UsageStoreError, UsageStoreUnavailable
from tests.fault_proxy import FaultProxy
from tests.servers import RedisServer

DAY = date(2025, 3, 31)
TIMEOUT_S = 10.0


def counts(requests: int, prompt: int = 0, completion: int = 0) -> UsageCounts:
    return UsageCounts(requests, prompt, completion)


class ScriptedStore(MemoryUsageStore):
    """The memory store, keeping a copy of every batch it is asked to add; it raises
    `failure` while that is set, and holds each write until `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts: list[dict[UsageKey, UsageCounts]] = []
        self.ids: list[BatchId | None] = []
        self.failure: Exception | None = None
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def add(
        self, batch: Mapping[UsageKey, UsageCounts], batch_id: BatchId | None = None
    ) -> None:
        self.attempts.append({key: replace(row) for key, row in batch.items()})
        self.ids.append(batch_id)
        self.entered.set()
        await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        await super().add(batch)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait for CHECK to hold, polling; fail after a generous timeout."""
    try:
        async with asyncio.timeout(TIMEOUT_S):
            while not await check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"no {what} within {TIMEOUT_S}s")


def test_record_and_flush_add_up_per_principal_tenant_model_and_day() -> None:
    async def main() -> None:
        store = MemoryUsageStore()
        recorder = UsageRecorder(store, clock=lambda: DAY)
        recorder.record("k1", "acme", "llama", TokenUsage(10, 5))
        recorder.record("k1", "acme", "llama", TokenUsage(1, 2))
        recorder.record("k1", "acme", "qwen", TokenUsage(3, 0))
        recorder.record("k2", "acme", "llama", TokenUsage(100, 50))
        recorder.record("k3", "globex", "llama", None)
        assert recorder.pending == 4
        assert await store.by_tenant("acme") == {}  # nothing written before a flush
        await recorder.flush()
        assert recorder.pending == 0
        assert await store.by_principal("k1") == {"llama": counts(2, 11, 7), "qwen": counts(1, 3)}
        assert await store.by_tenant("acme") == {"llama": counts(3, 111, 57), "qwen": counts(1, 3)}
        assert await store.by_principal("k3", DAY, DAY) == {"llama": counts(1)}

    asyncio.run(main())


def test_no_reported_usage_counts_a_request_with_no_tokens() -> None:
    async def main() -> None:
        store = MemoryUsageStore()
        recorder = UsageRecorder(store, clock=lambda: DAY)
        recorder.record("k1", "acme", "m", None)
        recorder.record("k1", "acme", "m", None)
        recorder.record("k1", "acme", "m", TokenUsage(0, 0))
        recorder.record("k1", "acme", "m", TokenUsage(-5, 4))  # a confused replica
        await recorder.flush()
        assert await store.by_principal("k1") == {"m": counts(4, 0, 4)}

    asyncio.run(main())


def test_one_add_per_flush_however_many_requests() -> None:
    async def main() -> None:
        store = ScriptedStore()
        recorder = UsageRecorder(store, clock=lambda: DAY)
        for n in range(1000):
            recorder.record(f"k{n % 2}", "acme", f"m{n % 3}", TokenUsage(1, 2))
        await recorder.flush()
        assert len(store.attempts) == 1
        assert len(store.attempts[0]) == 6
        assert sum(row.requests for row in store.attempts[0].values()) == 1000
        await recorder.flush()  # nothing pending: no write at all
        assert len(store.attempts) == 1
        assert await store.by_tenant("acme") == {
            "m0": counts(334, 334 * 1, 334 * 2),
            "m1": counts(333, 333, 666),
            "m2": counts(333, 333, 666),
        }

    asyncio.run(main())


def test_the_day_rolls_over_with_the_clock() -> None:
    today = [DAY]

    async def main() -> None:
        store = MemoryUsageStore()
        recorder = UsageRecorder(store, clock=lambda: today[0])
        recorder.record("k1", "acme", "m", TokenUsage(1, 1))
        recorder.record("k1", "acme", "m", TokenUsage(1, 1))
        today[0] = DAY + timedelta(days=1)
        recorder.record("k1", "acme", "m", TokenUsage(5, 5))
        await recorder.flush()
        assert await store.by_principal("k1", until=DAY) == {"m": counts(2, 2, 2)}
        assert await store.by_principal("k1", since=today[0]) == {"m": counts(1, 5, 5)}
        assert await store.by_principal("k1") == {"m": counts(3, 7, 7)}

    asyncio.run(main())


def test_a_refused_write_stays_pending_and_is_counted_once() -> None:
    async def main() -> None:
        store = ScriptedStore()
        recorder = UsageRecorder(store, clock=lambda: DAY)
        recorder.record("k1", "acme", "m", TokenUsage(1, 1))
        store.failure = UsageStoreUnavailable("down")
        with pytest.raises(UsageStoreUnavailable):
            await recorder.flush()
        recorder.record("k1", "acme", "m", TokenUsage(2, 2))
        recorder.record("k2", "acme", "m", None)
        store.failure = UsageStoreError("refused")
        with pytest.raises(UsageStoreError):
            await recorder.flush()
        assert recorder.pending == 3  # the failed batch, kept as it was, and the newer rows
        store.failure = None
        await recorder.flush()
        await recorder.flush()
        assert await store.by_tenant("acme") == {"m": counts(3, 3, 3)}
        assert len(store.attempts) == 4
        # The failed batch is sent again unchanged and under its id, before newer counts.
        assert store.attempts[0] == store.attempts[1] == store.attempts[2]
        first, retried, again, newer = store.ids
        assert first is not None and newer is not None
        assert first == retried == again and newer == replace(first, sequence=first.sequence + 1)
        assert store.attempts[-1][UsageKey("k1", "acme", "m", DAY)] == counts(1, 2, 2)

    asyncio.run(main())


@pytest.mark.parametrize("fails", [False, True])
def test_requests_recorded_during_a_write_are_not_lost(fails: bool) -> None:
    async def main() -> None:
        store = ScriptedStore()
        recorder = UsageRecorder(store, clock=lambda: DAY)
        recorder.record("k1", "acme", "m", TokenUsage(1, 1))
        store.gate.clear()
        store.failure = UsageStoreUnavailable("down") if fails else None
        write = asyncio.create_task(recorder.flush())
        await store.entered.wait()  # the batch is in flight
        recorder.record("k1", "acme", "m", TokenUsage(10, 10))
        recorder.record("k2", "acme", "m", TokenUsage(10, 10))
        store.gate.set()
        if fails:
            with pytest.raises(UsageStoreUnavailable):
                await write
        else:
            await write
        assert store.attempts[0] == {UsageKey("k1", "acme", "m", DAY): counts(1, 1, 1)}
        store.failure = None
        await recorder.flush()
        assert await store.by_tenant("acme") == {"m": counts(3, 21, 21)}
        assert await store.by_principal("k1") == {"m": counts(2, 11, 11)}

    asyncio.run(main())


def test_the_task_survives_store_failures_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.usage")

    async def main() -> None:
        store = ScriptedStore()
        recorder = UsageRecorder(store, interval_s=0.01, clock=lambda: DAY)
        store.failure = UsageStoreUnavailable("the store is down")
        recorder.start()
        recorder.record("sk-principal", "acme", "m", TokenUsage(1, 1))

        async def failed_often() -> bool:
            return len(store.attempts) >= 5

        await eventually(failed_often, "five failed writes")
        store.failure = RuntimeError("a bug in a store")  # not even a store error stops it
        attempts = len(store.attempts)

        async def failed_again() -> bool:
            return len(store.attempts) >= attempts + 3

        await eventually(failed_again, "more failed writes")
        recorder.record("sk-principal", "acme", "m", TokenUsage(1, 1))
        store.failure = None

        async def written() -> bool:
            return await store.by_tenant("acme") == {"m": counts(2, 2, 2)}

        await eventually(written, "the pending usage written")
        await recorder.stop()
        assert await store.by_tenant("acme") == {"m": counts(2, 2, 2)}

    asyncio.run(main())
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].name == "gateway.usage"
    assert "the store is down" in warnings[0].getMessage()
    assert any("resumed" in r.getMessage() for r in caplog.records)
    assert "sk-principal" not in caplog.text


def test_stop_writes_what_is_pending(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        store = ScriptedStore()
        recorder = UsageRecorder(store, interval_s=3600, clock=lambda: DAY)
        recorder.start()
        with pytest.raises(RuntimeError, match="already started"):
            recorder.start()
        recorder.record("k1", "acme", "m", TokenUsage(1, 2))
        await recorder.stop()
        assert await store.by_principal("k1") == {"m": counts(1, 1, 2)}
        recorder.record("k1", "acme", "m", TokenUsage(1, 2))
        store.failure = UsageStoreUnavailable("down at shutdown")
        await recorder.stop()  # a final attempt that fails is logged, not raised
        assert recorder.pending == 1
        assert len(store.attempts) == 2

    asyncio.run(main())
    assert "1 rows of counts dropped: down at shutdown" in caplog.text


def test_a_name_utf8_cannot_hold_does_not_block_the_batch(tmp_path: Path) -> None:
    async def main() -> None:
        store = await SqliteUsageStore.open(tmp_path / "keys.db")
        try:
            recorder = UsageRecorder(store, clock=lambda: DAY)
            recorder.record("sub-\udc80", "acme", "m", TokenUsage(1, 1))
            recorder.record("k1", "acme", "m", TokenUsage(1, 1))
            await recorder.flush()
            assert await store.by_principal("sub-?") == {"m": counts(1, 1, 1)}
            assert await store.by_tenant("acme") == {"m": counts(2, 2, 2)}
        finally:
            await store.close()

    asyncio.run(main())


# Over a real Redis that goes away and comes back.


def kill(server: RedisServer) -> None:
    """SIGKILL, not a clean shutdown: what a crash or an OOM kill does."""
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait(timeout=10)
    server.proc = None


def test_redis_crash_then_recovery_loses_and_doubles_nothing(redis_server: RedisServer) -> None:
    async def main() -> None:
        store = connect(redis_server.url, timeout_s=1.0)
        try:
            await scenario(store)
        finally:
            await store.close()

    async def scenario(store: RedisUsageStore) -> None:
        recorder = UsageRecorder(store, clock=lambda: DAY)
        recorder.record("k1", "acme", "m", TokenUsage(1, 1))
        await recorder.flush()
        kill(redis_server)
        for _ in range(3):
            recorder.record("k1", "acme", "m", TokenUsage(10, 10))
            with pytest.raises(UsageStoreUnavailable):
                await recorder.flush()
        recorder.record("k2", "acme", "m", None)
        redis_server.start()
        await recorder.flush()
        await recorder.flush()
        assert await store.by_principal("k1") == {"m": counts(4, 31, 31)}
        assert await store.by_tenant("acme") == {"m": counts(5, 31, 31)}

    asyncio.run(main())


def test_redis_periodic_writes_resume_after_a_restart(redis_server: RedisServer) -> None:
    async def main() -> None:
        store = connect(redis_server.url, timeout_s=1.0)
        try:
            await scenario(store)
        finally:
            await store.close()

    async def scenario(store: RedisUsageStore) -> None:
        recorder = UsageRecorder(store, interval_s=0.02, clock=lambda: DAY)
        recorder.start()
        for _ in range(50):
            recorder.record("k1", "acme", "m", TokenUsage(2, 1))

        async def written(requests: int) -> bool:
            totals = await store.by_principal("k1")
            return totals.get("m") == counts(requests, 2 * requests, requests)

        await eventually(lambda: written(50), "the first 50 requests written")
        kill(redis_server)
        for _ in range(50):
            recorder.record("k1", "acme", "m", TokenUsage(2, 1))
            await asyncio.sleep(0.002)  # spread over several failed intervals
        redis_server.start()

        async def all_written() -> bool:
            return recorder.pending == 0 and await written(100)

        await eventually(all_written, "all 100 requests written")
        await recorder.stop()
        assert await store.by_tenant("acme") == {"m": counts(100, 200, 100)}

    asyncio.run(main())


def test_redis_write_applied_but_its_answer_lost_is_counted_once(
    redis_server: RedisServer,
) -> None:
    """Redis runs the batch, then the connection drops before its answer arrives: the
    recorder sees a failure and retries, and the retry must not count it again."""
    proxy = FaultProxy(redis_server.port)
    proxy.start()

    async def main() -> None:
        store = connect(proxy.url, timeout_s=1.0)
        direct = connect(redis_server.url, timeout_s=1.0)
        try:
            await scenario(store, direct)
        finally:
            await store.close()
            await direct.close()

    async def scenario(store: RedisUsageStore, direct: RedisUsageStore) -> None:
        recorder = UsageRecorder(store, clock=lambda: DAY)
        recorder.record("k1", "acme", "m", TokenUsage(1, 1))
        await recorder.flush()  # Redis now knows the script: the next batch is one EVALSHA
        recorder.record("k1", "acme", "m", TokenUsage(10, 10))
        proxy.lose_reply_to(b"EVALSHA")
        with pytest.raises(UsageStoreUnavailable):
            await recorder.flush()
        assert await direct.by_principal("k1") == {"m": counts(2, 11, 11)}  # it was written
        assert recorder.pending == 1
        recorder.record("k2", "acme", "m", TokenUsage(5, 5))
        await recorder.flush()  # the lost batch again, then k2's
        assert recorder.pending == 0
        assert await direct.by_principal("k1") == {"m": counts(2, 11, 11)}
        assert await direct.by_tenant("acme") == {"m": counts(3, 16, 16)}

    try:
        asyncio.run(main())
    finally:
        proxy.stop()
