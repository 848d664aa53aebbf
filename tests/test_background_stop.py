"""Background tasks end when the gateway stops, even a task that lost a cancel.

On Python 3.11 redis-py's writes (inside `asyncio.wait_for`) can swallow a cancel that
lands as the write completes; a loop cancelled once then runs on, and a shutdown that
awaits it never ends. `gateway.tasks.cancel_and_wait` cancels until the task is gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from gateway.auth.key_cache import KeyCache
from gateway.keys.redis_store import RedisKeyStore
from gateway.tasks import cancel_and_wait
from gateway.tenants.directory import TenantDirectory
from gateway.tenants.redis_store import connect as connect_tenants
from tests.servers import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def ends(stopping: Coroutine[Any, Any, None]) -> bool:
    """Whether STOPPING returns within a generous wait (instead of waiting for ever)."""
    done, _ = await asyncio.wait({asyncio.ensure_future(stopping)}, timeout=10)
    return bool(done)


async def _stubborn(swallow: int, ticks: list[int]) -> None:
    """A loop that ignores its first SWALLOW cancels, as one behind a lossy wait_for."""
    while True:
        try:
            await asyncio.sleep(0.001)
            ticks.append(1)
        except asyncio.CancelledError:
            if swallow == 0:
                raise
            swallow -= 1


async def test_a_task_that_swallows_cancels_is_cancelled_until_it_ends() -> None:
    ticks: list[int] = []
    task = asyncio.ensure_future(_stubborn(3, ticks))
    await asyncio.sleep(0.01)
    done, _ = await asyncio.wait({asyncio.ensure_future(cancel_and_wait([task]))}, timeout=10)
    assert done, "cancel_and_wait did not return"
    assert task.cancelled()
    running = len(ticks)
    await asyncio.sleep(0.02)
    assert len(ticks) == running, "the task went on after cancel_and_wait returned"


async def test_a_single_cancel_is_not_enough_for_such_a_task() -> None:
    # What the helper is for: cancelled once, the same loop is still running.
    task = asyncio.ensure_future(_stubborn(1, []))
    await asyncio.sleep(0.01)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.5)
    assert not done
    await cancel_and_wait([task])
    assert task.cancelled()


async def test_ended_and_failed_tasks_are_collected_without_an_error() -> None:
    async def fail() -> None:
        raise RuntimeError("a background failure")

    finished = asyncio.ensure_future(asyncio.sleep(0))
    failed = asyncio.ensure_future(fail())
    running = asyncio.ensure_future(asyncio.sleep(60))
    await asyncio.sleep(0.01)
    await cancel_and_wait([finished, failed, running])
    assert finished.done() and not finished.cancelled()
    assert isinstance(failed.exception(), RuntimeError)
    assert running.cancelled()
    await cancel_and_wait([])


async def test_the_key_change_feed_stops_even_when_stopped_in_the_middle_of_a_ping(
    redis_server: RedisServer,
) -> None:
    # PINGing every half millisecond, stop() nearly always lands during a ping's write.
    # Before cancel_and_wait, 14 of 40 such stops waited for ever.
    for attempt in range(30):
        store = RedisKeyStore.connect(redis_server.url, ping_interval_s=0.0005)
        cache = KeyCache(store)
        cache.start()
        try:
            await asyncio.sleep(0.01 + attempt / 1000)
            assert await ends(cache.stop()), f"the key cache did not stop (attempt {attempt})"
        finally:
            await store.close()


async def test_the_tenant_directory_stops_even_when_closed_in_the_middle_of_a_poll(
    redis_server: RedisServer,
) -> None:
    # Polling Redis without a pause, close() nearly always lands during a read's write.
    for attempt in range(30):
        store = connect_tenants(redis_server.url)
        directory = TenantDirectory({}, poll_interval_s=0)
        await directory.open(store)
        try:
            await asyncio.sleep(0.005 + attempt / 1000)
            assert await ends(directory.close()), f"the directory did not stop ({attempt})"
        finally:
            await store.close()
