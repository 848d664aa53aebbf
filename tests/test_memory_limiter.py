"""The in-process limits backend on a fake clock: the exact retry, reset and remaining
figures a client is told, and what happens to a request settled after its minute.

The semantics both backends share are in tests/test_limiter.py.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway.limits.limiter import Bucket, Demand, Grant, Refusal
from gateway.limits.memory import MemoryRateLimiter
from gateway.principal import Rates


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def bucket(
    name: str, rpm: int | None = None, tpm: int | None = None, cc: int | None = None
) -> Bucket:
    return Bucket(name, Rates(rpm, tpm, cc))


def admit(
    limiter: MemoryRateLimiter, *buckets: Bucket, tokens: int = 0, lease: str = "l"
) -> Grant | Refusal:
    return asyncio.run(limiter.admit(Demand(buckets, tokens), lease))


def granted(answer: Grant | Refusal) -> Grant:
    assert isinstance(answer, Grant), answer
    return answer


def refused(answer: Grant | Refusal) -> Refusal:
    assert isinstance(answer, Refusal), answer
    return answer


def test_the_reset_and_retry_figures_are_exact() -> None:
    clock = Clock(1000.25)
    limiter = MemoryRateLimiter(clock)
    key = bucket("key:a", rpm=2)
    first = granted(admit(limiter, key))
    assert first.requests is not None
    assert (first.requests.limit, first.requests.remaining, first.requests.reset_s) == (2, 1, 59.75)
    clock.now = 1010.5
    second = granted(admit(limiter, key))
    assert second.requests is not None and second.requests.reset_s == 59.5
    assert second.requests.remaining == 0
    clock.now = 1030.5
    third = refused(admit(limiter, key))
    # Free again when the first request's second (1000) leaves the window, at 1060.
    assert (third.kind, third.retry_after_s) == ("requests", 29.5)
    # The window is empty a minute after its newest second (1010).
    assert third.requests is not None
    assert (third.requests.remaining, third.requests.reset_s) == (0, 39.5)


def test_a_zero_limit_waits_a_whole_window_on_an_empty_one() -> None:
    limiter = MemoryRateLimiter(Clock(1000.25))
    answer = refused(admit(limiter, bucket("key:z", rpm=0)))
    assert answer.retry_after_s == 60.0
    assert answer.requests is not None
    assert (answer.requests.limit, answer.requests.remaining, answer.requests.reset_s) == (
        0,
        0,
        59.75,
    )


def test_a_token_refusal_waits_until_just_enough_has_left_the_window() -> None:
    clock = Clock(1000.5)
    limiter = MemoryRateLimiter(clock)
    key = bucket("key:t", tpm=100)
    granted(admit(limiter, key, tokens=60))
    clock.now = 1010.25
    granted(admit(limiter, key, tokens=30))
    clock.now = 1020.0
    # 70 fits exactly once the 60 of second 1000 have left, at 1060.
    exact = refused(admit(limiter, key, tokens=70))
    assert (exact.kind, exact.retry_after_s) == ("tokens", 40.0)
    assert exact.tokens is not None and exact.tokens.remaining == 0
    # 80 needs the 30 of second 1010 gone as well, at 1070.
    assert refused(admit(limiter, key, tokens=80)).retry_after_s == 50.0
    grant = granted(admit(limiter, key, tokens=10))
    assert grant.tokens is not None and grant.tokens.remaining == 0


def test_the_longest_wait_is_reported_and_ties_name_the_first_bucket() -> None:
    clock = Clock(1000.0)
    limiter = MemoryRateLimiter(clock)
    key, tenant = bucket("key:a", rpm=1, cc=1), bucket("tenant:t", rpm=1)
    granted(admit(limiter, key, tenant, lease="1"))
    clock.now = 1030.0
    # Both minutes are spent, and the key's one slot is held: the minute is the longer wait.
    answer = refused(admit(limiter, key, tenant, lease="2"))
    assert (answer.bucket, answer.kind, answer.retry_after_s) == (key, "requests", 30.0)
    alone = refused(admit(limiter, bucket("key:a", cc=1), lease="3"))
    assert (alone.kind, alone.retry_after_s) == ("concurrent_requests", 1.0)


def test_a_lease_is_released_once_and_only_its_own() -> None:
    limiter = MemoryRateLimiter(Clock(1000.0))
    key = bucket("key:c", cc=2)
    one, two = granted(admit(limiter, key, lease="1")), granted(admit(limiter, key, lease="2"))
    asyncio.run(limiter.finish(one, None))
    asyncio.run(limiter.finish(one, None))  # twice: frees nothing more
    granted(admit(limiter, key, lease="3"))
    refused(admit(limiter, key, lease="4"))
    asyncio.run(limiter.finish(two, None))
    granted(admit(limiter, key, lease="5"))


def test_a_request_settled_after_its_minute_is_charged_only_an_overrun() -> None:
    clock = Clock(1000.0)
    limiter = MemoryRateLimiter(clock)
    key = bucket("key:s", tpm=1000)
    early = granted(admit(limiter, key, tokens=600, lease="1"))
    late = granted(admit(limiter, key, tokens=100, lease="2"))
    clock.now = 1070.0  # both reservations have left the window
    granted(admit(limiter, key, tokens=900, lease="3"))
    asyncio.run(limiter.finish(early, 100))  # used less: nothing to give back any more
    refused(admit(limiter, key, tokens=200, lease="4"))
    asyncio.run(limiter.finish(late, 150))  # used more: the 50 over are charged now
    answer = refused(admit(limiter, key, tokens=60, lease="5"))
    assert answer.tokens is not None and answer.tokens.remaining == 0
    granted(admit(limiter, key, tokens=50, lease="6"))


def test_a_settlement_in_the_window_moves_its_own_slot() -> None:
    clock = Clock(1000.0)
    limiter = MemoryRateLimiter(clock)
    key = bucket("key:m", tpm=1000)
    first = granted(admit(limiter, key, tokens=500, lease="1"))
    clock.now = 1030.0
    granted(admit(limiter, key, tokens=400, lease="2"))
    asyncio.run(limiter.finish(first, 100))  # second 1000 now holds 100
    granted(admit(limiter, key, tokens=500, lease="3"))
    clock.now = 1060.0  # second 1000 leaves: its 100 are freed, not 500
    grant = granted(admit(limiter, key, tokens=100, lease="4"))
    assert grant.tokens is not None and grant.tokens.remaining == 1000 - 900 - 100


def test_close_forgets_every_window_and_lease() -> None:
    limiter = MemoryRateLimiter(Clock(1000.0))
    key = bucket("key:x", rpm=1, cc=1)
    granted(admit(limiter, key, lease="1"))
    refused(admit(limiter, key, lease="2"))
    asyncio.run(limiter.close())
    granted(admit(limiter, key, lease="3"))


@pytest.mark.parametrize("tokens", [0, 1, 99, 100, 5000])
def test_each_bucket_is_charged_at_most_its_own_limit(tokens: int) -> None:
    limiter = MemoryRateLimiter(Clock(1000.0))
    small, large = bucket("key:p", tpm=100), bucket("tenant:p", tpm=10_000)
    grant = granted(admit(limiter, small, large, tokens=tokens))
    assert grant.tokens is not None
    assert (grant.tokens.limit, grant.tokens.remaining) == (100, 100 - min(tokens, 100))
    other = granted(admit(limiter, bucket("key:q", tpm=20_000), large, tokens=0, lease="2"))
    assert other.tokens is not None
    assert (other.tokens.limit, other.tokens.remaining) == (10_000, 10_000 - tokens)


def test_a_refund_in_a_shared_second_leaves_the_others_charges() -> None:
    limiter = MemoryRateLimiter(Clock(1000.0))
    key = bucket("key:r", tpm=1000)
    big = granted(admit(limiter, key, tokens=600, lease="1"))
    granted(admit(limiter, key, tokens=100, lease="2"))  # the same second
    asyncio.run(limiter.finish(big, 0))
    grant = granted(admit(limiter, key, tokens=900, lease="3"))
    assert grant.tokens is not None and grant.tokens.remaining == 0


def test_an_overrun_in_the_window_is_charged_once() -> None:
    clock = Clock(1000.0)
    limiter = MemoryRateLimiter(clock)
    key = bucket("key:o", tpm=1000)
    grant = granted(admit(limiter, key, tokens=300, lease="1"))
    clock.now = 1010.0
    asyncio.run(limiter.finish(grant, 500))  # 200 more, in second 1000
    granted(admit(limiter, key, tokens=500, lease="2"))
    refused(admit(limiter, key, tokens=1, lease="3"))
    clock.now = 1060.0  # second 1000 leaves with its 500: the 200 went there, not to 1010
    last = granted(admit(limiter, key, tokens=500, lease="4"))
    assert last.tokens is not None and last.tokens.remaining == 0


@pytest.mark.parametrize("start", [999.5, 1000.0, 1000.75])
def test_a_second_counts_for_exactly_sixty_seconds(start: float) -> None:
    clock = Clock(start)
    limiter = MemoryRateLimiter(clock)
    key = bucket("key:w", rpm=1)
    granted(admit(limiter, key, lease="1"))
    second = int(start)
    clock.now = second + 59.999
    assert refused(admit(limiter, key, lease="2")).retry_after_s == pytest.approx(0.001)
    clock.now = second + 60.0
    granted(admit(limiter, key, lease="3"))


def test_a_concurrency_limit_lowered_below_the_slots_held_admits_nobody() -> None:
    limiter = MemoryRateLimiter(Clock(1000.0))
    for lease in "123":
        granted(admit(limiter, bucket("key:l", cc=3), lease=lease))
    # The key's limit is edited down to 1 while three requests still run.
    assert refused(admit(limiter, bucket("key:l", cc=1), lease="4")).kind == "concurrent_requests"


def test_small_differences_in_tokens_are_kept_exactly() -> None:
    clock = Clock(1000.0)
    limiter = MemoryRateLimiter(clock)
    whole = granted(admit(limiter, bucket("key:0", tpm=100), tokens=100))
    asyncio.run(limiter.finish(whole, 0))  # nothing used: nothing stays charged
    granted(admit(limiter, bucket("key:0", tpm=100), tokens=100, lease="2"))
    one = granted(admit(limiter, bucket("key:1", tpm=100), tokens=50))
    clock.now = 1070.0
    asyncio.run(limiter.finish(one, 51))  # one token over, after the minute
    refused(admit(limiter, bucket("key:1", tpm=100), tokens=100, lease="2"))
    key = bucket("key:2", tpm=100)
    granted(admit(limiter, key, tokens=20))
    clock.now = 1080.0
    granted(admit(limiter, key, tokens=70))
    clock.now = 1090.0
    # The 20 of second 1070 leaving is not enough for 40 (70 + 40 > 100): wait for 1080's.
    assert refused(admit(limiter, key, tokens=40)).retry_after_s == 50.0
    assert refused(admit(limiter, key, tokens=31)).retry_after_s == 50.0  # one too many
    assert refused(admit(limiter, key, tokens=30)).retry_after_s == 40.0


def test_a_later_bucket_with_a_longer_wait_is_the_one_reported() -> None:
    limiter = MemoryRateLimiter(Clock(1000.0))
    key, tenant = bucket("key:k", cc=1), bucket("tenant:k", rpm=1)
    granted(admit(limiter, key, tenant, lease="1"))
    answer = refused(admit(limiter, key, tenant, lease="2"))
    assert (answer.bucket, answer.kind, answer.retry_after_s) == (tenant, "requests", 60.0)


def test_a_grant_in_an_odd_second_resets_a_minute_after_that_second() -> None:
    limiter = MemoryRateLimiter(Clock(1001.25))
    grant = granted(admit(limiter, bucket("key:a", rpm=5, tpm=100), tokens=10))
    assert grant.requests is not None and grant.tokens is not None
    assert grant.requests.reset_s == 59.75 and grant.tokens.reset_s == 59.75


def test_the_headers_tell_the_first_of_buckets_with_as_much_left() -> None:
    clock = Clock(1000.0)
    limiter = MemoryRateLimiter(clock)
    key, tenant = bucket("key:a", rpm=10), bucket("tenant:t", rpm=6)
    for _ in range(4):  # the key: 4 of 10 used
        granted(admit(limiter, key))
    # The key has 10 - 4 - 1 = 5 left after this one, the tenant 6 - 0 - 1 = 5: a tie.
    grant = granted(admit(limiter, key, tenant))
    assert grant.requests is not None
    assert (grant.requests.limit, grant.requests.remaining) == (10, 5)
    # One less left on the tenant: the tenant's figures.
    granted(admit(limiter, tenant))
    grant = granted(admit(limiter, key, tenant))
    assert grant.requests is not None
    assert (grant.requests.limit, grant.requests.remaining) == (6, 3)
