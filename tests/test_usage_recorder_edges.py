"""The usage recorder's edges: what `pending` reports while the store is down, a clock
that steps back over midnight, the pace of its warnings on a timer the test moves, what
its logs say when writes resume, and how often it writes by default.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest

from gateway.usage.recorder import MAX_KEYS, UsageRecorder
from gateway.usage.records import TokenUsage
from gateway.usage.store import MemoryUsageStore, UsageStoreUnavailable
from tests.test_usage_recorder import DAY, ScriptedStore, counts


class Timer:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pending_counts_the_failed_batch_and_the_newer_rows() -> None:
    async def main() -> None:
        store = ScriptedStore()
        recorder = UsageRecorder(store, clock=lambda: DAY)
        store.failure = UsageStoreUnavailable("down")
        recorder.record("k1", "acme", "m", TokenUsage(1, 1))
        with pytest.raises(UsageStoreUnavailable):
            await recorder.flush()
        recorder.record("k2", "acme", "m", TokenUsage(1, 1))
        assert recorder.pending == 2  # one row unsent, one newer
        recorder.record("k3", "acme", "m", TokenUsage(1, 1))
        recorder.record("k4", "acme", "m", TokenUsage(1, 1))
        assert recorder.pending == 4
        store.failure = None
        await recorder.flush()
        assert recorder.pending == 0
        assert await store.by_tenant("acme") == {"m": counts(4, 4, 4)}

    asyncio.run(main())


def test_a_clock_stepped_back_over_midnight_counts_on_the_earlier_day() -> None:
    today = [DAY + timedelta(days=1)]

    async def main() -> None:
        store = MemoryUsageStore()
        recorder = UsageRecorder(store, clock=lambda: today[0])
        recorder.record("k1", "acme", "m", TokenUsage(1, 1))
        today[0] = DAY  # the host's clock corrected backwards
        recorder.record("k1", "acme", "m", TokenUsage(2, 2))
        await recorder.flush()
        assert await store.by_principal("k1", until=DAY) == {"m": counts(1, 2, 2)}
        assert await store.by_principal("k1", since=DAY + timedelta(days=1)) == {
            "m": counts(1, 1, 1)
        }

    asyncio.run(main())


def test_warnings_come_at_most_once_a_minute_and_say_how_much_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.usage")
    timer = Timer()
    warned_at: list[float] = []

    async def main() -> None:
        store = ScriptedStore()
        recorder = UsageRecorder(store, clock=lambda: DAY, timer=timer)
        store.failure = UsageStoreUnavailable("the store is down")
        recorder.record("k1", "acme", "m", TokenUsage(1, 1))
        # Each step: move the timer, one failed write; note when a warning came.
        for step in (0.0, 30.0, 29.5, 0.5, 59.0, 1001.0):
            timer.now += step
            before = len(caplog.records)
            await recorder._flush_and_report()
            if len(caplog.records) > before:
                warned_at.append(timer.now)

    asyncio.run(main())
    # Not at 1030, 1059.5 (59.5 s after the first) or 1119 (59 s after the second).
    assert warned_at == [1000.0, 1060.0, 2120.0]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 3
    for record in warnings:
        assert "could not write usage (1 rows pending, retrying every 1s)" in record.getMessage()
        assert not record.exc_info  # a store that is down needs no traceback


def test_a_store_bug_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        store = ScriptedStore()
        recorder = UsageRecorder(store, clock=lambda: DAY, timer=Timer())
        store.failure = RuntimeError("a bug in a store")
        recorder.record("k1", "acme", "m", TokenUsage(1, 1))
        await recorder._flush_and_report()

    asyncio.run(main())
    (warning,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.exc_info is not None and warning.exc_info[0] is RuntimeError


def test_resumed_writes_say_how_many_attempts_failed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.usage")
    timer = Timer()

    async def main() -> None:
        store = ScriptedStore()
        recorder = UsageRecorder(store, clock=lambda: DAY, timer=timer)
        recorder.record("k1", "acme", "m", TokenUsage(1, 1))
        for outage in (2, 1):
            store.failure = UsageStoreUnavailable("down")
            for _ in range(outage):
                await recorder._flush_and_report()
            store.failure = None
            await recorder._flush_and_report()
            await recorder._flush_and_report()  # a second success says nothing more
            recorder.record("k1", "acme", "m", TokenUsage(1, 1))

    asyncio.run(main())
    resumed = [r.getMessage() for r in caplog.records if "resumed" in r.getMessage()]
    assert resumed == [
        "usage writes resumed after 2 failed attempts",
        "usage writes resumed after 1 failed attempts",
    ]


def test_by_default_usage_is_written_once_a_second_not_continuously() -> None:
    async def main() -> None:
        store = ScriptedStore()
        recorder = UsageRecorder(store, clock=lambda: DAY)
        recorder.start()
        recorder.record("k1", "acme", "m", TokenUsage(1, 1))
        await asyncio.sleep(0.3)
        assert store.attempts == []  # the first write comes a second after the start
        await recorder.stop()
        assert len(store.attempts) == 1

    asyncio.run(main())


def test_stop_ends_the_writer_task_and_works_without_one() -> None:
    async def main() -> None:
        store = ScriptedStore()
        recorder = UsageRecorder(store, interval_s=0.01, clock=lambda: DAY)
        recorder.start()
        recorder.record("k1", "acme", "m", TokenUsage(1, 1))
        await recorder.stop()
        written = len(store.attempts)
        recorder.record("k1", "acme", "m", TokenUsage(1, 1))
        await asyncio.sleep(0.2)  # twenty intervals: a writer still running would write
        assert len(store.attempts) == written and recorder.pending == 1
        never_started = UsageRecorder(store, clock=lambda: DAY)
        never_started.record("k2", "acme", "m", TokenUsage(1, 1))
        await never_started.stop()  # the final write, with no task to stop
        assert await store.by_principal("k2") == {"m": counts(1, 1, 1)}

    asyncio.run(main())


def test_a_negative_count_from_a_replica_is_never_taken_off() -> None:
    async def main() -> None:
        store = MemoryUsageStore()
        recorder = UsageRecorder(store, clock=lambda: DAY)
        recorder.record("k1", "acme", "m", TokenUsage(5, 5))
        recorder.record("k1", "acme", "m", TokenUsage(-1, -1))
        recorder.record("k1", "acme", "m", TokenUsage(-7, 2))
        recorder.record("k1", "acme", "m", TokenUsage(3, -9))
        await recorder.flush()
        assert await store.by_principal("k1") == {"m": counts(4, 8, 7)}

    asyncio.run(main())


def test_a_flood_of_principals_keeps_the_row_keys_bounded_and_loses_no_count() -> None:
    # Anyone with a valid JWT is a principal of its own: the per-principal row keys the
    # recorder keeps for the request path are emptied at MAX_KEYS, never grown past it.
    async def main() -> None:
        store = MemoryUsageStore()
        recorder = UsageRecorder(store, clock=lambda: DAY)
        flood = MAX_KEYS + 2_500
        for number in range(flood):
            recorder.record(f"jwt:subject-{number}", "acme", "m", TokenUsage(1, 2))
            assert len(recorder._keys) <= MAX_KEYS
        recorder.record("jwt:subject-0", "acme", "m", TokenUsage(1, 2))  # met again after
        await recorder.flush()
        assert await store.by_tenant("acme") == {"m": counts(flood + 1, flood + 1, 2 * flood + 2)}
        assert await store.by_principal("jwt:subject-0") == {"m": counts(2, 2, 4)}

    asyncio.run(main())
