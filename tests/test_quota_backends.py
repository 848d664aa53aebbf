"""The quota backends, one suite over both: in-process and a real redis-server.

The clock is injected (UTC epoch seconds): periods are crossed by moving it, never
by sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.limits.limiter import LimiterBackendError
from gateway.limits.periods import go_duration, window
from gateway.limits.quota_memory import SWEEP_EVERY_S, MemoryQuotas
from gateway.limits.quota_redis import RedisQuotas
from gateway.limits.quotas import (
    GRACE_S,
    Amounts,
    Counter,
    QuotaBackend,
    QuotaDemand,
    QuotaGrant,
    QuotaRefusal,
)
from tests.servers import RedisServer

pytestmark = pytest.mark.anyio
# 2026-01-31 23:59:50 UTC: ten seconds before both a day and a month end.
EVE = datetime(2026, 1, 31, 23, 59, 50, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> Clock:
    return Clock(EVE)


@pytest.fixture(params=["memory", "redis"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> AsyncIterator[QuotaBackend]:
    if request.param == "memory":
        yield MemoryQuotas(clock)
        return
    server = RedisServer(tmp_path)
    server.start()
    quotas = RedisQuotas.connect(server.url, clock=clock)
    try:
        yield quotas
    finally:
        await quotas.close()
        server.stop()


def counter(
    kind: str = "tokens", period: str = "day", limit: int = 1000, owner: str = "key:1:a"
) -> Counter:
    return Counter(owner, "key", "acme", kind, period, limit)


def demand(*counters: Counter, prompt: int = 0, completion: int = 0, cost: int = 0) -> QuotaDemand:
    return QuotaDemand(counters, Amounts(prompt, completion, 1, cost))


async def granted(backend: QuotaBackend, request: QuotaDemand) -> QuotaGrant:
    answer = await backend.reserve(request)
    assert isinstance(answer, QuotaGrant), answer
    return answer


def test_periods_are_utc_days_and_calendar_months() -> None:
    day, month = window("day", EVE), window("month", EVE)
    assert (day.name, month.name) == ("2026-01-31", "2026-01")
    assert day.reset_s == month.reset_s == 10
    assert window("month", EVE + 10).name == "2026-02"
    feb = window("month", datetime(2026, 2, 10, tzinfo=UTC).timestamp())
    assert feb.end - feb.start == 28 * 86400
    december = window("month", datetime(2026, 12, 31, 12, tzinfo=UTC).timestamp())
    assert datetime.fromtimestamp(december.end, UTC) == datetime(2027, 1, 1, tzinfo=UTC)
    assert go_duration(86399) == "23h59m59s" and go_duration(61) == "1m1s"


async def test_used_plus_reserved_plus_request_never_passes_the_limit(
    backend: QuotaBackend,
) -> None:
    tokens = counter(limit=100)
    first = await granted(backend, demand(tokens, prompt=30, completion=30))
    assert first.states[0].reserved == 60 and first.states[0].remaining == 40
    refused = await backend.reserve(demand(tokens, prompt=20, completion=21))
    assert isinstance(refused, QuotaRefusal)
    assert (refused.state.used, refused.state.reserved) == (0, 60)
    exact = await granted(backend, demand(tokens, prompt=20, completion=20))
    assert exact.states[0].remaining == 0


async def test_settling_replaces_the_reservation_with_the_real_usage(
    backend: QuotaBackend,
) -> None:
    tokens, prompt = counter(limit=100), counter("prompt_tokens", limit=100)
    grant = await granted(backend, demand(tokens, prompt, prompt=10, completion=50))
    await backend.settle(grant, Amounts(10, 5, 1, 0))
    after = await backend.read([tokens, prompt])
    assert [(s.used, s.reserved) for s in after] == [(15, 0), (10, 0)]


async def test_settling_one_grant_leaves_the_others_reservations(backend: QuotaBackend) -> None:
    tokens = counter(limit=1000)
    first = await granted(backend, demand(tokens, prompt=30))
    await granted(backend, demand(tokens, prompt=50))
    await backend.settle(first, Amounts(20, 0, 1, 0))
    untouched = counter(owner="key:2:b")
    state, fresh = await backend.read([tokens, untouched])
    assert (state.used, state.reserved, state.before) == (20, 50, 70)
    assert (fresh.used, fresh.reserved, fresh.before, fresh.remaining) == (0, 0, 0, 1000)


async def test_each_counter_of_a_grant_tells_its_own_usage(backend: QuotaBackend) -> None:
    tokens, requests = counter(limit=1000), counter("requests", limit=100)
    prompt = counter("prompt_tokens", limit=1000)
    grant = await granted(backend, demand(tokens, requests, prompt, prompt=30, completion=10))
    await backend.settle(grant, Amounts(25, 5, 1, 0))
    again = await granted(backend, demand(tokens, requests, prompt, prompt=1))
    assert [(s.used, s.reserved, s.before) for s in again.states] == [
        (30, 1, 30),
        (1, 1, 1),
        (25, 1, 25),
    ]
    refused = await backend.reserve(demand(requests, prompt, tokens, prompt=2000))
    assert isinstance(refused, QuotaRefusal)
    assert [(s.used, s.reserved) for s in refused.states] == [(1, 1), (25, 1), (30, 1)]


async def test_unknown_usage_keeps_the_reservation(backend: QuotaBackend) -> None:
    tokens, requests = counter(limit=100), counter("requests", limit=5)
    grant = await granted(backend, demand(tokens, requests, prompt=10, completion=40))
    await backend.settle(grant, None)
    after = await backend.read([tokens, requests])
    assert [(s.used, s.reserved) for s in after] == [(50, 0), (1, 0)]


async def test_one_full_counter_refuses_and_charges_none(backend: QuotaBackend) -> None:
    roomy, tight = counter(limit=1000), counter("requests", limit=1, owner="tenant:1:t")
    await granted(backend, demand(tight))
    refused = await backend.reserve(demand(roomy, tight, prompt=10))
    assert isinstance(refused, QuotaRefusal)
    assert refused.state.counter == tight
    assert [s.reserved for s in await backend.read([roomy, tight])] == [0, 1]


async def test_a_refusal_waits_for_the_period_that_ends_last(
    backend: QuotaBackend, clock: Clock
) -> None:
    clock.now = EVE - 10 * 86400  # mid-month: the day ends first
    day, month = counter(limit=5), counter(period="month", limit=5)
    await granted(backend, demand(day, month, prompt=5))
    refused = await backend.reserve(demand(day, month, prompt=1))
    assert isinstance(refused, QuotaRefusal)
    assert refused.state.counter.period == "month"


async def test_crossing_midnight_starts_a_new_day_but_not_a_new_month(
    backend: QuotaBackend, clock: Clock
) -> None:
    day = counter(limit=10)
    month = counter(period="month", limit=15, owner="key:1:b")
    grant = await granted(backend, demand(day, prompt=10))
    assert isinstance(await backend.reserve(demand(day, prompt=1)), QuotaRefusal)
    clock.now = EVE + 10  # 2026-02-01 00:00:00: a new day and a new month
    # Settled after midnight, the usage stays in the day it was admitted in.
    await backend.settle(grant, Amounts(10, 0, 1, 0))
    fresh = await granted(backend, demand(day, month, prompt=10))
    assert [s.window.name for s in fresh.states] == ["2026-02-01", "2026-02"]
    clock.now = EVE + 10 + 86400  # 2026-02-02: the day resets, the month does not
    refused = await backend.reserve(demand(day, month, prompt=6))
    assert isinstance(refused, QuotaRefusal)
    assert refused.state.counter.period == "month"
    assert refused.state.window.reset_s == 27 * 86400


def soft(*counters: Counter, prompt: int) -> QuotaDemand:
    """A demand that asks which counters it takes to 80 % of their limit first."""
    return QuotaDemand(counters, Amounts(prompt, 0, 1, 0), 0.8)


async def test_the_soft_mark_is_reached_once_per_period(
    backend: QuotaBackend, clock: Clock
) -> None:
    clock.now = EVE - 3600
    day, month = counter(limit=100), counter(period="month", limit=1000)
    below = await granted(backend, soft(day, month, prompt=79))
    assert [s.crossed for s in below.states] == [False, False]
    first = await granted(backend, soft(day, month, prompt=1))  # 80 of 100: exactly at it
    assert [s.crossed for s in first.states] == [True, False]
    # Undone (another limit refused it) and reached again: not a second crossing.
    await backend.settle(first, Amounts(0, 0, 0, 0))
    again = await granted(backend, soft(day, prompt=5))
    assert [s.crossed for s in again.states] == [False]
    # A reservation that settles lower and a sawtooth around the mark: still once.
    await backend.settle(again, Amounts(0, 0, 1, 0))
    await backend.settle(below, Amounts(70, 0, 1, 0))
    assert not any(s.crossed for s in (await granted(backend, soft(day, prompt=15))).states)
    # The month reaches its own mark; the next day's counter starts afresh.
    big = await granted(backend, soft(month, prompt=730))  # 70 + 730: 800 of 1000
    assert [s.crossed for s in big.states] == [True]
    clock.now = EVE + 3600
    fresh = await granted(backend, soft(day, prompt=85))
    assert [s.crossed for s in fresh.states] == [True]
    assert [s.window.name for s in fresh.states] == ["2026-02-01"]


async def test_a_raised_limit_is_crossed_again_at_its_own_mark(backend: QuotaBackend) -> None:
    await granted(backend, soft(counter(limit=100), prompt=90))
    raised = counter(limit=200)
    assert not (await granted(backend, soft(raised, prompt=60))).states[0].crossed  # 150
    assert (await granted(backend, soft(raised, prompt=10))).states[0].crossed  # 160 of 200
    lowered = counter(limit=170)  # its mark, 136, is below the one reached: not again
    assert not (await granted(backend, soft(lowered, prompt=1))).states[0].crossed


async def test_a_refusal_and_a_demand_without_threshold_mark_nothing(
    backend: QuotaBackend,
) -> None:
    day = counter(limit=100)
    assert isinstance(await backend.reserve(soft(day, prompt=101)), QuotaRefusal)
    plain = await granted(backend, demand(day, prompt=95))  # no threshold asked
    assert [s.crossed for s in plain.states] == [False]
    # The mark was never recorded, so the first demand that asks is told.
    assert (await granted(backend, soft(day, prompt=1))).states[0].crossed


async def test_each_counter_tells_its_own_crossing(backend: QuotaBackend) -> None:
    roomy, tight = counter(limit=1000), counter(period="month", limit=10)
    grant = await granted(backend, soft(roomy, tight, prompt=8))
    assert [s.crossed for s in grant.states] == [False, True]


async def test_the_smallest_marks_are_crossed_once(backend: QuotaBackend) -> None:
    # A limit of 1 has its mark at 1 (80 % rounded up), a limit of 0 at 0: a free
    # model's requests (cost 0) fit a cost quota of 0 and are past its threshold.
    one = counter("requests", limit=1)
    assert [s.crossed for s in (await granted(backend, soft(one, prompt=0))).states] == [True]
    zero = counter("cost", limit=0)
    free = QuotaDemand((zero,), Amounts(5, 0, 1, 0), 0.8)
    assert [s.crossed for s in (await granted(backend, free)).states] == [True]
    assert [s.crossed for s in (await granted(backend, free)).states] == [False]


async def test_a_limit_lowered_below_the_usage_refuses_everything(backend: QuotaBackend) -> None:
    grant = await granted(backend, demand(counter(limit=100), prompt=80))
    await backend.settle(grant, Amounts(80, 0, 1, 0))
    lowered = counter(limit=50)
    refused = await backend.reserve(demand(lowered, prompt=1))
    assert isinstance(refused, QuotaRefusal)
    assert refused.state.remaining == 0
    assert (await backend.read([lowered]))[0].used == 80


async def test_huge_limits_and_amounts_are_exact(backend: QuotaBackend) -> None:
    huge = counter("cost", limit=10**15)
    grant = await granted(backend, demand(huge, cost=10**15 - 1))
    await backend.settle(grant, Amounts(0, 0, 1, 10**15 - 1))
    state = (await backend.read([huge]))[0]
    assert (state.used, state.remaining) == (10**15 - 1, 1)


async def test_the_soft_mark_of_a_huge_limit_is_exact(backend: QuotaBackend) -> None:
    # 80 % of 10^15 micro-dollars: one below the mark is not past it, the mark is.
    huge = counter("cost", limit=10**15)

    def spend(cost: int) -> QuotaDemand:
        return QuotaDemand((huge,), Amounts(0, 0, 1, cost), 0.8)

    assert not (await granted(backend, spend(8 * 10**14 - 1))).states[0].crossed
    assert (await granted(backend, spend(1))).states[0].crossed
    state = (await backend.read([huge]))[0]
    assert (state.reserved, state.remaining) == (8 * 10**14, 2 * 10**14)


async def test_redis_counters_expire_after_their_period(tmp_path: Path, clock: Clock) -> None:
    server = RedisServer(tmp_path)
    server.start()
    quotas = RedisQuotas.connect(server.url, clock=clock)
    client = Redis.from_url(server.url)
    try:
        clock.now = EVE - 3600
        grant = await granted(quotas, demand(counter(), counter(period="month"), prompt=1))
        keys = sorted(key.decode() for key in await client.keys("vgw:quota:*"))
        assert keys == ["vgw:quota:key:1:a:tokens:2026-01", "vgw:quota:key:1:a:tokens:2026-01-31"]
        for key in keys:
            ttl = await client.ttl(key)
            assert 3610 + GRACE_S - 5 <= ttl <= 3610 + GRACE_S, (key, ttl)
        # Settled an hour later (a long stream): the expiry is still the period's end
        # plus the grace, from the settling gateway's clock.
        clock.now = EVE
        await quotas.settle(grant, Amounts(1, 0, 1, 0))
        for key in keys:
            ttl = await client.ttl(key)
            assert 10 + GRACE_S - 5 <= ttl <= 10 + GRACE_S, (key, ttl)
    finally:
        await client.aclose()
        await quotas.close()
        server.stop()


async def test_memory_counters_are_dropped_a_grace_after_their_period(clock: Clock) -> None:
    # Swept at most once an hour: a sweep walks every counter.
    quotas = MemoryQuotas(clock)
    day, month = counter(), counter(period="month")
    clock.now = EVE - 86400  # 2026-01-30 23:59:50; held until 2026-02-01 00:00:00
    await granted(quotas, demand(day, month, prompt=1))
    clock.now = EVE  # a sweep: nothing is past its grace yet
    await granted(quotas, demand(day, prompt=1))
    assert len(quotas) == 3
    clock.now = EVE + 20  # the first day's grace is over, the next sweep an hour away
    await granted(quotas, demand(day, prompt=1))
    assert len(quotas) == 4
    clock.now = EVE + SWEEP_EVERY_S
    await granted(quotas, demand(day, prompt=1))
    assert len(quotas) == 3
    [state] = await quotas.read([day])
    assert (state.window.name, state.reserved) == ("2026-02-01", 2)


async def test_a_grant_tells_what_was_counted_before_it(backend: QuotaBackend) -> None:
    # `before` (used + reserved before this charge) is what the soft threshold reads.
    tokens = counter(limit=1000)
    first = await granted(backend, demand(tokens, prompt=100))
    assert first.states[0].before == 0
    second = await granted(backend, demand(tokens, prompt=50))
    assert second.states[0].before == 100
    await backend.settle(first, Amounts(30, 0, 1, 0))
    third = await granted(backend, demand(tokens, prompt=7))
    assert third.states[0].before == 30 + 50


async def test_redis_down_is_a_backend_error(tmp_path: Path, clock: Clock) -> None:
    server = RedisServer(tmp_path)
    server.start()
    quotas = RedisQuotas.connect(server.url, clock=clock, timeout_s=0.5)
    try:
        grant = await granted(quotas, demand(counter(), prompt=1))
        server.stop()
        with pytest.raises(LimiterBackendError):
            await quotas.reserve(demand(counter(), prompt=1))
        with pytest.raises(LimiterBackendError):
            await quotas.settle(grant, None)
        with pytest.raises(LimiterBackendError):
            await quotas.read([counter()])
    finally:
        await quotas.close()


async def test_concurrent_reservations_never_pass_the_limit(backend: QuotaBackend) -> None:
    tokens = counter(limit=100)
    answers = await asyncio.gather(*(backend.reserve(demand(tokens, prompt=7)) for _ in range(40)))
    granted_count = sum(isinstance(answer, QuotaGrant) for answer in answers)
    assert granted_count == 100 // 7
    assert (await backend.read([tokens]))[0].reserved == 7 * (100 // 7)


async def test_overshoot_is_bounded_by_the_usage_beyond_reservations_in_flight(
    backend: QuotaBackend,
) -> None:
    limit, reservation = 100, 9
    tokens = counter(limit=limit)
    answers = await asyncio.gather(
        *(backend.reserve(demand(tokens, prompt=reservation)) for _ in range(30))
    )
    grants = [answer for answer in answers if isinstance(answer, QuotaGrant)]
    # Every grant in flight uses twice its reservation (a replica that under-reported).
    await asyncio.gather(*(backend.settle(g, Amounts(2 * reservation, 0, 1, 0)) for g in grants))
    used = (await backend.read([tokens]))[0].used
    excess = len(grants) * reservation
    overshoot = used - limit
    assert overshoot <= excess, f"overshoot {overshoot} past {excess} beyond reservations"
    assert used == 2 * reservation * len(grants), f"used {used}, overshoot {overshoot}"
    # Spent: refused until the period ends.
    assert isinstance(await backend.reserve(demand(tokens, prompt=1)), QuotaRefusal)
