"""The limits backends, one suite over both: in-process and a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.limits.limiter import (
    Bucket,
    Demand,
    Grant,
    LimiterBackendError,
    RateLimiter,
    Refusal,
)
from gateway.limits.memory import MemoryRateLimiter
from gateway.limits.redis_limiter import RedisRateLimiter
from gateway.principal import Rates
from tests.servers import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        yield MemoryRateLimiter()
        return
    server = RedisServer(tmp_path)
    server.start()
    backend = RedisRateLimiter.connect(server.url, lease_ttl_s=3.0)
    try:
        yield backend
    finally:
        await backend.close()
        server.stop()


def bucket(
    name: str, rpm: int | None = None, tpm: int | None = None, cc: int | None = None
) -> Bucket:
    return Bucket(name, Rates(rpm, tpm, cc))


async def admit(
    limiter: RateLimiter, *buckets: Bucket, tokens: int = 0, lease: str = "l"
) -> Grant | Refusal:
    return await limiter.admit(Demand(buckets, tokens), lease)


async def test_requests_per_minute_admit_exactly_the_limit(limiter: RateLimiter) -> None:
    key = bucket("key:a", rpm=5)
    answers = [await admit(limiter, key, lease=str(i)) for i in range(8)]
    grants = [a for a in answers if isinstance(a, Grant)]
    refusals = [a for a in answers if isinstance(a, Refusal)]
    assert len(grants) == 5 and len(refusals) == 3
    assert [g.requests.remaining for g in grants if g.requests] == [4, 3, 2, 1, 0]
    assert all(r.kind == "requests" and 0 < r.retry_after_s <= 60 for r in refusals)
    assert refusals[0].requests is not None and refusals[0].requests.remaining == 0
    # The window empties a minute after the requests: the reset says so.
    assert grants[-1].requests is not None and 59 < grants[-1].requests.reset_s <= 60


async def test_a_refusal_charges_no_bucket(limiter: RateLimiter) -> None:
    key, tenant = bucket("key:a", rpm=10), bucket("tenant:t", rpm=1)
    assert isinstance(await admit(limiter, key, tenant), Grant)
    refused = await admit(limiter, key, tenant)
    assert isinstance(refused, Refusal) and refused.bucket == tenant
    # The key's own budget was not spent by the refused request: 9 left, not 8.
    other_tenant = bucket("tenant:u", rpm=10)
    grant = await admit(limiter, key, other_tenant)
    assert isinstance(grant, Grant) and grant.requests is not None
    assert grant.requests.remaining == 8  # key: 10 - 2 admitted


async def test_headers_follow_the_bucket_with_least_left(limiter: RateLimiter) -> None:
    grant = await admit(
        limiter,
        bucket("key:a", rpm=100, tpm=1000),
        bucket("tenant:t", rpm=3, tpm=50_000),
        tokens=200,
    )
    assert isinstance(grant, Grant)
    assert grant.requests is not None and (grant.requests.limit, grant.requests.remaining) == (3, 2)
    assert grant.tokens is not None and (grant.tokens.limit, grant.tokens.remaining) == (1000, 800)


async def test_token_reservation_is_settled_to_the_real_usage(limiter: RateLimiter) -> None:
    key = bucket("key:a", tpm=1000)
    first = await admit(limiter, key, tokens=600)
    assert isinstance(first, Grant)
    # 600 reserved: another 600 does not fit.
    assert isinstance(await admit(limiter, key, tokens=600, lease="2"), Refusal)
    await limiter.finish(first, 100)
    second = await admit(limiter, key, tokens=600, lease="3")
    assert isinstance(second, Grant) and second.tokens is not None
    assert second.tokens.remaining == 1000 - 100 - 600
    # An overrun is charged too.
    await limiter.finish(second, 850)
    third = await admit(limiter, key, tokens=60, lease="4")  # 950 used
    assert isinstance(third, Refusal) and third.kind == "tokens"
    assert third.tokens is not None and third.tokens.remaining == 0


async def test_finish_without_usage_keeps_the_reservation(limiter: RateLimiter) -> None:
    key = bucket("key:a", tpm=1000)
    grant = await admit(limiter, key, tokens=700)
    assert isinstance(grant, Grant)
    await limiter.finish(grant, None)
    assert isinstance(await admit(limiter, key, tokens=400, lease="2"), Refusal)


async def test_a_reservation_never_exceeds_the_limit(limiter: RateLimiter) -> None:
    # A request that may use more than the whole minute's tokens still runs once the
    # minute is empty, and is then settled at its real size.
    key = bucket("key:a", tpm=100)
    grant = await admit(limiter, key, tokens=5000)
    assert isinstance(grant, Grant) and grant.tokens is not None and grant.tokens.remaining == 0
    assert isinstance(await admit(limiter, key, tokens=1, lease="2"), Refusal)


async def test_concurrency_leases_are_released_on_finish(limiter: RateLimiter) -> None:
    key = bucket("key:a", cc=2)
    one, two = await admit(limiter, key, lease="1"), await admit(limiter, key, lease="2")
    assert isinstance(one, Grant) and isinstance(two, Grant)
    third = await admit(limiter, key, lease="3")
    assert isinstance(third, Refusal) and third.kind == "concurrent_requests"
    assert third.retry_after_s > 0
    await limiter.finish(one, None)
    assert isinstance(await admit(limiter, key, lease="4"), Grant)


async def test_a_zero_limit_refuses_everything(limiter: RateLimiter) -> None:
    for rates in ({"rpm": 0}, {"tpm": 0}, {"cc": 0}):
        answer = await admit(limiter, bucket(f"key:{rates}", **rates), tokens=5)
        assert isinstance(answer, Refusal)
        # The headers tell a limit of zero, none left; a limit not set is not told.
        told = {"rpm": answer.requests, "tpm": answer.tokens}
        for name, quota in told.items():
            if name in rates:
                assert quota is not None and (quota.limit, quota.remaining) == (0, 0)
            else:
                assert quota is None


async def test_a_bucket_without_a_token_limit_counts_no_tokens(limiter: RateLimiter) -> None:
    grant = await admit(limiter, bucket("key:a", rpm=10), tokens=10)
    assert isinstance(grant, Grant) and grant.tokens is None
    await limiter.finish(grant, 500)  # far beyond its estimate: nothing to settle
    # A token limit set later (a tenant's limits changed live) starts from an empty minute.
    answer = await admit(limiter, bucket("key:a", rpm=10, tpm=100), tokens=10, lease="2")
    assert isinstance(answer, Grant) and answer.tokens is not None
    assert answer.tokens.remaining == 90


async def test_names_keep_buckets_apart(limiter: RateLimiter) -> None:
    assert isinstance(await admit(limiter, bucket("key:1:a", rpm=1)), Grant)
    assert isinstance(await admit(limiter, bucket("key:1:b", rpm=1)), Grant)
    assert isinstance(await admit(limiter, bucket("key:1:a", rpm=1)), Refusal)


async def test_concurrent_admissions_never_overshoot(limiter: RateLimiter) -> None:
    key = bucket("key:a", rpm=37, cc=50)
    answers = await asyncio.gather(*(admit(limiter, key, lease=str(i)) for i in range(120)))
    assert sum(isinstance(answer, Grant) for answer in answers) == 37


async def test_memory_window_slides_second_by_second() -> None:
    now = [1000.5]
    limiter = MemoryRateLimiter(clock=lambda: now[0])
    key = bucket("key:a", rpm=2)
    assert isinstance(await admit(limiter, key), Grant)
    now[0] = 1030.2
    assert isinstance(await admit(limiter, key), Grant)
    refused = await admit(limiter, key)
    assert isinstance(refused, Refusal)
    # The first request's second (1000) leaves the window at 1060.
    assert refused.retry_after_s == pytest.approx(1060 - 1030.2)
    now[0] = 1060.0
    assert isinstance(await admit(limiter, key), Grant)
    assert isinstance(await admit(limiter, key), Refusal)
    now[0] = 1090.0
    assert isinstance(await admit(limiter, key), Grant)


async def wait_until(check: Callable[[], object], within_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while loop.time() < deadline:
        if await check():  # type: ignore[misc]
            return True
        await asyncio.sleep(0.1)
    return False


async def test_leases_of_a_dead_replica_expire_and_live_ones_are_renewed(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    living = RedisRateLimiter.connect(server.url, lease_ttl_s=3.0)
    # Its own client, with timeouts: no step of this test may wait on Redis forever.
    client = Redis.from_url(server.url, socket_timeout=5, socket_connect_timeout=5)
    dying = RedisRateLimiter(client, lease_ttl_s=3.0)
    observer = RedisRateLimiter.connect(server.url, lease_ttl_s=3.0)
    try:
        key = bucket("key:a", cc=2)
        assert isinstance(await admit(living, key, lease="living"), Grant)
        assert isinstance(await admit(dying, key, lease="dying"), Grant)
        await dying.close()  # a replica that dies: its lease is never released or renewed
        assert isinstance(await admit(observer, key, lease="x"), Refusal)

        async def one_slot_free() -> bool:
            answer = await admit(observer, key, lease="probe")
            if isinstance(answer, Grant):
                await observer.finish(answer, None)
                return True
            return False

        assert await wait_until(one_slot_free, within_s=10)
        # Three TTLs later, the living replica's lease still holds its slot.
        await asyncio.sleep(9)
        assert isinstance(await admit(observer, key, lease="y"), Grant)
        assert isinstance(await admit(observer, key, lease="z"), Refusal)
        assert living.renew_failures == 0
    finally:
        await living.close()
        await observer.close()
        server.stop()


async def test_redis_down_is_a_backend_error(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    backend = RedisRateLimiter.connect(server.url)
    try:
        assert isinstance(await admit(backend, bucket("key:a", rpm=5)), Grant)
        server.stop()
        with pytest.raises(LimiterBackendError):
            await admit(backend, bucket("key:a", rpm=5))
        server.start()
        answer = await admit(backend, bucket("key:a", rpm=5))
        # AOF kept the first admission across the restart.
        assert isinstance(answer, Grant) and answer.requests is not None
        assert answer.requests.remaining == 3
    finally:
        await backend.close()
        server.stop()


async def test_a_failed_lease_renewal_is_counted(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    failures: list[None] = []
    backend = RedisRateLimiter.connect(
        server.url, lease_ttl_s=3.0, on_renew_failure=lambda: failures.append(None)
    )
    try:
        assert isinstance(await admit(backend, bucket("key:a", cc=1), lease="held"), Grant)
        server.stop()  # renewals (every second here) now fail

        async def counted() -> bool:
            return bool(failures)

        assert await wait_until(counted, within_s=10)
        assert backend.renew_failures == len(failures) > 0
    finally:
        await backend.close()
        server.stop()
