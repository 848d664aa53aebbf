"""Admission (`gateway/limits/admission.py`) on its own: which buckets a request counts
against, the 429's words and headers, and the failure policy when the backend cannot
answer, on a clock the test moves.

The backends are real: the in-process limiter, and the Redis limiter pointed at a
port nothing listens on (a refused connection, as when Redis is down) or at a real
redis-server stopped mid-request. tests/test_limits_requests.py shows the same rules
through a running gateway.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.limits.admission import (
    Admissions,
    LimiterUnavailable,
    RateLimited,
    Ticket,
    buckets_for,
    quota_headers,
)
from gateway.limits.limiter import Bucket, Demand, Quota, Refusal
from gateway.limits.memory import MemoryRateLimiter
from gateway.limits.redis_limiter import RedisRateLimiter
from gateway.metrics import Metrics
from gateway.principal import Limits, Principal, Rates
from tests.servers import RedisServer, free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def key(limits: Limits, *, tenant: str = "acme", name: str = "k1") -> Principal:
    return Principal(name, tenant, "key", limits=limits)


def admissions(
    clock: Clock,
    *,
    backend: object | None = None,
    tenants: dict[str, Limits] | None = None,
    fail_open: bool = False,
) -> tuple[Admissions, Metrics]:
    metrics = Metrics(CollectorRegistry())
    limiter = backend if backend is not None else MemoryRateLimiter(clock)
    made = Admissions(
        limiter,  # type: ignore[arg-type]
        metrics,
        tenants=tenants or {},
        fail_open=fail_open,
        clock=clock,
    )
    return made, metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def dead_redis() -> RedisRateLimiter:
    return RedisRateLimiter.connect(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)


# Buckets


def test_buckets_cover_the_principal_the_tenant_and_their_per_model_rates() -> None:
    own = Limits(requests_per_minute=5, models={"m": Rates(tokens_per_minute=100)})
    tenant = Limits(concurrent_requests=2, models={"m": Rates(requests_per_minute=9)})
    buckets = buckets_for(key(own), tenant, "m")
    assert [b.name for b in buckets] == [
        "key:2:k1",
        "key:2:k1:1:m",
        "tenant:4:acme",
        "tenant:4:acme:1:m",
    ]
    assert [b.rates for b in buckets] == [
        Rates(5, None, None),
        Rates(None, 100, None),
        Rates(None, None, 2),
        Rates(9, None, None),
    ]


def test_buckets_leave_out_what_has_no_rate() -> None:
    own = Limits(max_tokens=100, models={"other": Rates(requests_per_minute=1)})
    assert buckets_for(key(own), None, "m") == ()
    assert buckets_for(key(own), Limits(models={"m": Rates()}), "m") == ()
    jwt = Principal("sub", "acme", "jwt", limits=Limits(tokens_per_minute=7))
    assert [b.name for b in buckets_for(jwt, None, "m")] == ["jwt:3:sub"]


def test_bucket_names_cannot_be_confused_by_colons_in_names() -> None:
    # "a:1" with model "b" and "a" with model "1:b" would both read a:1:b without lengths.
    first = buckets_for(key(Limits(models={"b": Rates(1)}), name="a:1"), None, "b")
    second = buckets_for(key(Limits(models={"1:b": Rates(1)}), name="a"), None, "1:b")
    assert first[0].name != second[0].name


async def test_without_any_rate_nothing_is_asked_of_the_backend() -> None:
    made, metrics = admissions(Clock(), backend=dead_redis())
    ticket = await made.admit(key(Limits(max_tokens=5)), "m", 10)
    assert ticket.grant is None and ticket.headers == []
    await made.finish(ticket, 10)
    assert (
        sample(metrics, "gateway_limiter_backend_errors_total", action="admit", outcome="closed")
        == 0
    )


async def test_changed_limits_take_effect_for_the_same_key() -> None:
    clock = Clock()
    tenants = {"acme": Limits(requests_per_minute=100)}
    made, _ = admissions(clock, tenants=tenants)
    first = await made.admit(key(Limits(requests_per_minute=1)), "m", 1)
    assert first.grant is not None
    with pytest.raises(RateLimited):
        await made.admit(key(Limits(requests_per_minute=1)), "m", 1)
    # The same key with a new limits record (an admin raised it): its own bucket again.
    raised = await made.admit(key(Limits(requests_per_minute=3)), "m", 1)
    assert dict(raised.headers)[b"x-ratelimit-limit-requests"] == b"3"
    # The tenant's limits replaced in place (the tenant directory swaps its entries),
    # the key's own record unchanged.
    same = key(Limits(requests_per_minute=10))
    await made.admit(same, "m", 1)
    tenants["acme"] = Limits(requests_per_minute=3)
    with pytest.raises(RateLimited) as refused:
        await made.admit(same, "m", 1)
    assert "tenant" in refused.value.message


# Grants and refusals


async def test_a_grant_carries_the_tightest_quota_headers() -> None:
    made, _ = admissions(Clock())
    ticket = await made.admit(key(Limits(requests_per_minute=10, tokens_per_minute=1000)), "m", 40)
    assert ticket.grant is not None
    headers = dict(ticket.headers)
    assert headers[b"x-ratelimit-limit-requests"] == b"10"
    assert headers[b"x-ratelimit-remaining-requests"] == b"9"
    assert headers[b"x-ratelimit-limit-tokens"] == b"1000"
    assert headers[b"x-ratelimit-remaining-tokens"] == b"960"
    assert headers[b"x-ratelimit-reset-requests"].endswith(b"s")
    await made.finish(ticket, 10)


@pytest.mark.parametrize(
    ("limits", "kind", "words"),
    [
        (Limits(requests_per_minute=1), "requests", "requests per minute on this API key."),
        (Limits(tokens_per_minute=50), "tokens", "tokens per minute on this API key."),
        (
            Limits(concurrent_requests=1),
            "concurrent_requests",
            "concurrent requests on this API key.",
        ),
        (
            Limits(models={"m": Rates(requests_per_minute=1)}),
            "requests",
            "requests per minute on this API key for this model.",
        ),
    ],
)
async def test_a_refusal_names_the_limit_and_when_to_retry(
    limits: Limits, kind: str, words: str
) -> None:
    made, metrics = admissions(Clock())
    await made.admit(key(limits), "m", 40)
    with pytest.raises(RateLimited) as refused:
        await made.admit(key(limits), "m", 40)
    error = refused.value
    assert (error.status, error.kind, error.code) == (429, kind, "rate_limit_exceeded")
    assert f"Rate limit reached for {words} Please try again in " in error.message
    assert error.headers is not None
    retry = float(error.headers["retry-after"])
    retry_ms = float(error.headers["retry-after-ms"])
    assert retry >= 1 and retry == math.ceil(retry_ms / 1000)
    if kind == "concurrent_requests":  # a slot may free at any moment: try in a second
        assert (retry, retry_ms) == (1, 1000)
    assert b'"type":"' + kind.encode() + b'"' in error.body().replace(b" ", b"")
    assert sample(metrics, "gateway_rate_limit_refusals_total", kind=kind, scope="key") == 1


async def test_a_tenant_refusal_says_tenant_and_counts_under_its_scope() -> None:
    tenants = {"acme": Limits(requests_per_minute=1)}
    made, metrics = admissions(Clock(), tenants=tenants)
    await made.admit(key(Limits(), name="a"), "m", 1)
    with pytest.raises(RateLimited) as refused:
        await made.admit(key(Limits(), name="b"), "m", 1)
    assert "on this tenant." in refused.value.message
    assert refused.value.headers is not None
    assert refused.value.headers["x-ratelimit-remaining-requests"] == "0"
    assert (
        sample(metrics, "gateway_rate_limit_refusals_total", kind="requests", scope="tenant") == 1
    )
    assert sample(metrics, "gateway_rate_limit_refusals_total", kind="requests", scope="key") == 0


async def second_refused(made: Admissions, principal: Principal) -> str:
    """The message of the 429 a one-request-a-minute PRINCIPAL gets on its second call."""
    await made.admit(principal, "m", 1)
    with pytest.raises(RateLimited) as refused:
        await made.admit(principal, "m", 1)
    return refused.value.message


@pytest.mark.parametrize("subject", ["alice", "urn:org:alice", "a:b", "x:1:y:2:z"])
async def test_a_subject_is_told_its_own_limit_even_with_colons_in_its_name(subject: str) -> None:
    made, _ = admissions(Clock())
    own = Principal(subject, "acme", "jwt", limits=Limits(requests_per_minute=1))
    assert "on this token subject. " in await second_refused(made, own)
    per_model = Limits(models={"m": Rates(requests_per_minute=1)})
    principal = Principal(subject, "acme", "jwt", limits=per_model)
    assert "on this token subject for this model. " in await second_refused(made, principal)


async def test_each_grant_has_its_own_lease_so_finishing_one_frees_one_slot() -> None:
    made, _ = admissions(Clock())
    limits = Limits(concurrent_requests=2)
    first = await made.admit(key(limits), "m", 1)
    second = await made.admit(key(limits), "m", 1)
    assert first.grant is not None and second.grant is not None
    assert first.grant.lease != second.grant.lease
    with pytest.raises(RateLimited):
        await made.admit(key(limits), "m", 1)
    await made.finish(first, 1)
    third = await made.admit(key(limits), "m", 1)
    assert third.grant is not None
    with pytest.raises(RateLimited):
        await made.admit(key(limits), "m", 1)


# The backend cannot answer


async def test_failing_closed_is_a_503_then_a_pause_without_asking_the_backend(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    made, metrics = admissions(clock, backend=dead_redis(), fail_open=False)
    limits = Limits(requests_per_minute=5)
    with caplog.at_level(logging.WARNING, "gateway.limits"):
        for _ in range(3):
            with pytest.raises(LimiterUnavailable) as unavailable:
                await made.admit(key(limits), "m", 1)
    error = unavailable.value
    assert (error.status, error.code) == (503, "rate_limiter_unavailable")
    assert error.headers == {"retry-after": "1"}
    assert (
        sample(metrics, "gateway_limiter_backend_errors_total", action="admit", outcome="closed")
        == 3
    )
    warnings = [r for r in caplog.records if r.name == "gateway.limits"]
    assert len(warnings) == 1  # one warning per LOG_EVERY_S, not one per request
    assert "failing closed" in warnings[0].getMessage()
    assert "could not admit a request" in warnings[0].getMessage()


async def test_the_first_failure_is_logged_even_soon_after_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    clock.now = 2.0  # a monotonic clock two seconds after boot
    made, _ = admissions(clock, backend=dead_redis(), fail_open=True)
    with caplog.at_level(logging.WARNING, "gateway.limits"):
        await made.admit(key(Limits(requests_per_minute=5)), "m", 1)
    assert "rate-limit backend unavailable" in caplog.text


class Answering:
    """A backend that gives one fixed answer: here, a refusal whose wait has already
    passed (a window that emptied between Redis's check and its reply)."""

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s

    async def admit(self, demand: Demand, lease: str) -> Refusal:
        return Refusal(demand.buckets[0], "requests", self.retry_after_s)


@pytest.mark.parametrize("retry_after_s", [0.0, -0.5])
async def test_a_refusal_never_says_retry_after_zero(retry_after_s: float) -> None:
    made, _ = admissions(Clock(), backend=Answering(retry_after_s))
    with pytest.raises(RateLimited) as refused:
        await made.admit(key(Limits(requests_per_minute=5)), "m", 1)
    assert refused.value.headers is not None
    assert refused.value.headers["retry-after"] == "1"
    assert refused.value.headers["retry-after-ms"] == "1"
    assert refused.value.message.endswith("Please try again in 1ms.")


async def test_failing_open_admits_without_a_grant_and_counts_it() -> None:
    clock = Clock()
    made, metrics = admissions(clock, backend=dead_redis(), fail_open=True)
    ticket = await made.admit(key(Limits(requests_per_minute=1)), "m", 1)
    assert ticket == Ticket(None)
    again = await made.admit(key(Limits(requests_per_minute=1)), "m", 1)  # past the limit
    assert again.grant is None
    assert (
        sample(metrics, "gateway_limiter_backend_errors_total", action="admit", outcome="open") == 2
    )


async def test_the_backend_is_asked_again_once_the_pause_is_over(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    clock = Clock()
    backend = RedisRateLimiter.connect(server.url, timeout_s=2.0)
    made, metrics = admissions(clock, backend=backend, fail_open=False)
    limits = Limits(requests_per_minute=1)
    try:
        with pytest.raises(LimiterUnavailable):
            await made.admit(key(limits), "m", 1)  # nothing listens yet
        server.start()
        clock.now += 0.999  # still paused: refused without asking
        with pytest.raises(LimiterUnavailable):
            await made.admit(key(limits), "m", 1)
        assert (
            sample(
                metrics, "gateway_limiter_backend_errors_total", action="admit", outcome="closed"
            )
            == 2
        )
        clock.now += 0.001  # the pause is over: asked, and Redis answers
        ticket = await made.admit(key(limits), "m", 1)
        assert ticket.grant is not None
        with pytest.raises(RateLimited):  # and its count is the shared one
            await made.admit(key(limits), "m", 1)
        # A paused refusal does not restart the pause: only a failed call does.
        server.stop()
        with pytest.raises(LimiterUnavailable):
            await made.admit(key(limits), "m", 1)
        clock.now += 0.5
        with pytest.raises(LimiterUnavailable):
            await made.admit(key(limits), "m", 1)
        server.start()
        clock.now += 0.5
        with pytest.raises(RateLimited):  # asked again 1 s after the failure, not after 1.5
            await made.admit(key(limits), "m", 1)
    finally:
        await backend.close()
        server.stop()


async def test_a_finish_the_backend_misses_is_counted_and_the_lease_left_to_expire(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path)
    server.start()
    clock = Clock()
    backend = RedisRateLimiter.connect(server.url, timeout_s=2.0)
    made, metrics = admissions(clock, backend=backend)
    try:
        ticket = await made.admit(key(Limits(concurrent_requests=1)), "m", 1)
        assert ticket.grant is not None
        server.stop()
        with caplog.at_level(logging.WARNING, "gateway.limits"):
            await made.finish(ticket, 1)  # no exception reaches the request
        assert (
            sample(
                metrics, "gateway_limiter_backend_errors_total", action="finish", outcome="expired"
            )
            == 1
        )
        assert "could not release a request" in caplog.text
        # Redis failed: admissions pause too, even though it is back at once.
        server.start()
        with pytest.raises(LimiterUnavailable):
            await made.admit(key(Limits(concurrent_requests=1)), "m", 1)
        clock.now += 1.0
        with pytest.raises(RateLimited):  # the lease is still held: refused by Redis itself
            await made.admit(key(Limits(concurrent_requests=1)), "m", 1)
    finally:
        await backend.close()
        server.stop()


async def test_warnings_resume_after_the_interval_with_the_count_of_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    made, _ = admissions(clock, backend=dead_redis(), fail_open=True)
    limits = Limits(requests_per_minute=5)
    with caplog.at_level(logging.WARNING, "gateway.limits"):
        await made.admit(key(limits), "m", 1)
        for _ in range(3):
            clock.now += 1.0  # each past the pause: the backend is asked and fails
            await made.admit(key(limits), "m", 1)
        clock.now += 26.5  # 29.5 s after the first warning: still quiet
        await made.admit(key(limits), "m", 1)
        clock.now += 0.5  # 30 s after it
        await made.admit(key(limits), "m", 1)
    messages = [r.getMessage() for r in caplog.records if r.name == "gateway.limits"]
    assert len(messages) == 2
    assert "(1 failed calls since the last warning), failing open" in messages[0]
    assert "(5 failed calls since the last warning), failing open" in messages[1]


# The headers


def test_quota_headers_follow_openai_names_and_reset_format() -> None:
    headers = quota_headers(Quota(60, 59, 0.25), Quota(1000, 0, 61.5))
    assert headers == [
        (b"x-ratelimit-limit-requests", b"60"),
        (b"x-ratelimit-remaining-requests", b"59"),
        (b"x-ratelimit-reset-requests", b"250ms"),
        (b"x-ratelimit-limit-tokens", b"1000"),
        (b"x-ratelimit-remaining-tokens", b"0"),
        (b"x-ratelimit-reset-tokens", b"1m1.5s"),
    ]
    assert quota_headers(None, None) == []
    assert quota_headers(None, Quota(5, 4, 6.5)) == [
        (b"x-ratelimit-limit-tokens", b"5"),
        (b"x-ratelimit-remaining-tokens", b"4"),
        (b"x-ratelimit-reset-tokens", b"6.5s"),
    ]
    same = quota_headers(Quota(1, 0, 2.0), Quota(2, 1, 2.0))
    assert same[2] == (b"x-ratelimit-reset-requests", b"2s")
    assert same[5] == (b"x-ratelimit-reset-tokens", b"2s")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-0.5, b"0ms"),
        (0.0, b"0ms"),
        (0.0004, b"0ms"),
        (0.9994, b"999ms"),
        (0.9996, b"1s"),
        (1.0, b"1s"),
        (6.5, b"6.5s"),
        (59.9999, b"1m0s"),
        (60.0, b"1m0s"),
        (125.25, b"2m5.25s"),
        (3600.0, b"60m0s"),
    ],
)
def test_reset_durations_read_as_openai_writes_them(seconds: float, text: bytes) -> None:
    assert quota_headers(Quota(1, 0, seconds), None)[2][1] == text


def test_a_bucket_reserves_no_more_than_its_token_limit() -> None:
    assert Bucket("b", Rates(tokens_per_minute=100)).token_charge(500) == 100
    assert Bucket("b", Rates(tokens_per_minute=100)).token_charge(40) == 40
    assert Bucket("b", Rates(requests_per_minute=1)).token_charge(500) == 500
