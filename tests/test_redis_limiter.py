"""The Redis limits backend against a real redis-server: what it tells clients, read
against Redis's own clock and keys, and how it renews and reports its leases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.limits.limiter import Bucket, Demand, Grant, Quota, Refusal
from gateway.limits.redis_limiter import RedisRateLimiter
from gateway.principal import Rates
from tests.servers import RedisServer

pytestmark = pytest.mark.anyio
TTL_MS = 3000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[Redis]:
    """The test's own view of the limiter's keys; with timeouts, so that it never hangs."""
    client = Redis.from_url(server.url, socket_timeout=5, socket_connect_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def limiter(server: RedisServer) -> AsyncIterator[RedisRateLimiter]:
    backend = RedisRateLimiter.connect(server.url, lease_ttl_s=TTL_MS / 1000)
    try:
        yield backend
    finally:
        await backend.close()


def demand(
    tokens: int = 0, rpm: int | None = None, tpm: int | None = None, cc: int | None = None
) -> Demand:
    return Demand((Bucket("key:a", Rates(rpm, tpm, cc)),), tokens)


async def redis_ms(client: Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def evalsha_calls(client: Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_grant_resets_and_its_lease_expires_from_its_admission(
    limiter: RedisRateLimiter, client: Redis
) -> None:
    before = await redis_ms(client)
    grant = await limiter.admit(demand(tokens=10, rpm=10, tpm=100, cc=1), "lease-1")
    after = await redis_ms(client)
    assert isinstance(grant, Grant) and grant.requests is not None and grant.tokens is not None
    assert before // 1000 <= grant.slot <= after // 1000
    # The window empties a minute after the grant's second: the reset counts down to
    # that instant from the admission, to the millisecond of Redis's clock.
    admitted_ms = (grant.slot + 60 - grant.requests.reset_s) * 1000
    assert admitted_ms == pytest.approx(round(admitted_ms), abs=1e-6)
    assert before <= round(admitted_ms) <= after
    assert grant.tokens.reset_s == grant.requests.reset_s
    # The lease expires one TTL after that same instant unless it is renewed.
    expiry = await client.zscore("vgw:rl:key:a:c", "lease-1")
    assert expiry == pytest.approx(admitted_ms + TTL_MS, abs=1e-6)


async def test_a_refusal_tells_when_the_window_frees(
    limiter: RedisRateLimiter, client: Redis
) -> None:
    before = await redis_ms(client)
    grant = await limiter.admit(demand(tokens=10, rpm=1, tpm=100), "a")
    refusal = await limiter.admit(demand(tokens=10, rpm=1, tpm=100), "b")
    after = await redis_ms(client)
    assert isinstance(grant, Grant) and isinstance(refusal, Refusal)
    assert refusal.kind == "requests"
    # The one request in the window leaves it when its second does: the retry and both
    # quotas' resets say so, counted from the refusal on Redis's clock.
    wait = refusal.retry_after_s
    assert refusal.requests == Quota(1, 0, wait)
    assert refusal.tokens == Quota(100, 80, wait)
    refused_ms = (grant.slot + 60 - wait) * 1000
    assert refused_ms == pytest.approx(round(refused_ms), abs=1e-6)
    assert before <= round(refused_ms) <= after


async def test_leases_are_renewed_together_a_third_of_their_lifetime_apart(
    server: RedisServer,
) -> None:
    # A TTL of 1.5 s renews every 0.5 s: every lease held in one call, not in a loop
    # that never sleeps, nor in one loop per admission.
    client = Redis.from_url(server.url, socket_timeout=5, socket_connect_timeout=5)
    limiter = RedisRateLimiter.connect(server.url, lease_ttl_s=1.5)
    key, tenant = Bucket("key:a", Rates(None, None, 5)), Bucket("tenant:t", Rates(None, None, 5))
    held = [("vgw:rl:key:a:c", "one"), ("vgw:rl:key:a:c", "two"), ("vgw:rl:tenant:t:c", "two")]
    loop = asyncio.get_running_loop()

    async def expiries() -> list[float | None]:
        return [await client.zscore(name, lease) for name, lease in held]

    try:
        assert isinstance(await limiter.admit(Demand((key,), 0), "one"), Grant)
        assert isinstance(await limiter.admit(Demand((key, tenant), 0), "two"), Grant)
        first = await expiries()
        calls, start = await evalsha_calls(client), loop.time()
        while any(now == then for now, then in zip(await expiries(), first, strict=True)):
            assert loop.time() < start + 10, "a lease was not renewed"
            await asyncio.sleep(0.05)
        await asyncio.sleep(1)
        renewals = await evalsha_calls(client) - calls
        elapsed = loop.time() - start
        assert 1 <= renewals <= elapsed / 0.5 + 2
        # Each renewal moves the expiries a whole TTL past Redis's clock.
        now = await redis_ms(client)
        assert all(e is not None and 0 < e - now <= 1500 for e in await expiries())
    finally:
        await limiter.close()
        await client.aclose()


async def test_readiness_names_why_redis_does_not_answer(
    limiter: RedisRateLimiter, server: RedisServer
) -> None:
    assert await limiter.ping() == "ok"
    server.stop()
    answer = await limiter.ping()
    assert answer.startswith("unavailable: could not reach Redis: ConnectionError")
    server.start()
    assert await limiter.ping() == "ok"


async def test_close_ends_the_renewal_even_in_the_middle_of_one(server: RedisServer) -> None:
    # Renewing every millisecond, close() nearly always lands during a renewal's write,
    # where Python 3.11's `asyncio.wait_for` (redis-py's write timeout) can swallow the
    # cancel; close() must return all the same, and nothing may go on renewing.
    for attempt in range(20):
        limiter = RedisRateLimiter.connect(server.url, lease_ttl_s=0.003)
        assert isinstance(await limiter.admit(demand(cc=100), f"lease-{attempt}"), Grant)
        await asyncio.sleep(attempt / 1000)
        closing = asyncio.ensure_future(limiter.close())
        done, _ = await asyncio.wait({closing}, timeout=10)
        assert done, f"close() did not return (attempt {attempt})"
