"""Quota admission (`gateway/limits/quota_admission.py`) on its own: which counters a
request counts against, the grant's headers, the 429's words, settlement, and the
failure policy when the backend cannot answer, on clocks the test moves.

The backends are real: the in-process quotas on an injected UTC clock, and the Redis
quotas pointed at a port nothing listens on (a refused connection, as when Redis is
down) or at a real redis-server started late or stopped mid-request.
tests/test_quotas_requests.py shows the same rules through a running gateway.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.limits.admission import LimiterUnavailable, RateLimited
from gateway.limits.periods import window
from gateway.limits.quota_admission import (
    QuotaAdmissions,
    QuotaExceeded,
    QuotaTicket,
    _amount,
    quota_headers,
)
from gateway.limits.quota_memory import MemoryQuotas
from gateway.limits.quota_metrics import QuotaMetrics
from gateway.limits.quota_redis import RedisQuotas
from gateway.limits.quotas import Counter, CounterState, Price, QuotaBackend
from gateway.metrics import Metrics
from gateway.principal import Limits, Principal, Quotas
from tests.servers import RedisServer, free_port

pytestmark = pytest.mark.anyio
# 2026-01-30 23:59:49.75 UTC: the day ends in 10.25 s, the month a day later.
EVE = datetime(2026, 1, 30, 23, 59, 49, 750000, tzinfo=UTC).timestamp()
DAY_END = "2026-01-31T00:00:00Z"
MONTH_END = "2026-02-01T00:00:00Z"
ERRORS = "gateway_limiter_backend_errors_total"
REFUSALS = "gateway_quota_refusals_total"
CROSSINGS = "gateway_quota_soft_threshold_crossings_total"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def key(quotas: Quotas, *, name: str = "k1", tenant: str = "acme") -> Principal:
    return Principal(name, tenant, "key", limits=Limits(quotas=quotas))


def build(
    backend: QuotaBackend | None = None,
    *,
    tenants: dict[str, Quotas] | None = None,
    prices: dict[str, Price] | None = None,
    soft_threshold: float = 0.8,
    fail_open: bool = False,
    clock: Clock | None = None,
) -> tuple[QuotaAdmissions, Metrics]:
    metrics = Metrics(CollectorRegistry())
    made = QuotaAdmissions(
        MemoryQuotas(Clock(EVE)) if backend is None else backend,
        QuotaMetrics(metrics),
        tenants={} if tenants is None else tenants,
        prices={} if prices is None else prices,
        soft_threshold=soft_threshold,
        fail_open=fail_open,
        clock=Clock(5000.0) if clock is None else clock,
    )
    return made, metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def quota_labels(scope: str, period: str, kind: str, tenant: str = "acme") -> dict[str, str]:
    return {"scope": scope, "period": period, "kind": kind, "tenant": tenant}


def dead_redis() -> RedisQuotas:
    url = f"redis://127.0.0.1:{free_port()}/0"
    return RedisQuotas.connect(url, timeout_s=0.5, clock=Clock(EVE))


async def usage(made: QuotaAdmissions, principal: Principal) -> dict[str, tuple[int, int]]:
    """(used, reserved) of each of PRINCIPAL's counters, by `{scope}:{kind}:{period}`."""
    states = await made.backend.read(made.counters(principal))
    return {
        f"{s.counter.scope}:{s.counter.kind}:{s.counter.period}": (s.used, s.reserved)
        for s in states
    }


# Which counters apply


def test_the_counters_are_the_keys_then_the_tenants_of_every_kind_and_period() -> None:
    every = Quotas(*range(1, 11))
    made, _ = build(tenants={"acme": Quotas(requests_per_day=3)})
    own = made.counters(key(every))
    assert [(c.kind, c.period, c.limit) for c in own] == [
        ("tokens", "day", 1),
        ("tokens", "month", 2),
        ("prompt_tokens", "day", 3),
        ("prompt_tokens", "month", 4),
        ("completion_tokens", "day", 5),
        ("completion_tokens", "month", 6),
        ("requests", "day", 7),
        ("requests", "month", 8),
        ("cost", "day", 9),
        ("cost", "month", 10),
        ("requests", "day", 3),
    ]
    assert {(c.owner, c.scope, c.tenant) for c in own[:10]} == {("key:2:k1", "key", "acme")}
    assert own[10] == Counter("tenant:4:acme", "tenant", "acme", "requests", "day", 3)


def test_a_principal_without_quotas_has_none_and_a_tenant_alone_counts() -> None:
    made, _ = build(tenants={"acme": Quotas(cost_per_month=7)})
    assert made.counters(key(Quotas(), tenant="other")) == ()
    assert made.counters(key(Quotas())) == (
        Counter("tenant:4:acme", "tenant", "acme", "cost", "month", 7),
    )
    jwt = Principal("sub", "other", "jwt", limits=Limits(quotas=Quotas(tokens_per_month=5)))
    assert made.counters(jwt) == (Counter("jwt:3:sub", "jwt", "other", "tokens", "month", 5),)


def test_counters_are_built_once_per_version_of_the_quotas() -> None:
    tenants = {"acme": Quotas(requests_per_day=3)}
    made, _ = build(tenants=tenants)
    first = made.counters(key(Quotas(tokens_per_day=10)))
    assert made.counters(key(Quotas(tokens_per_day=10))) is first  # equal, a new object
    principal = key(Quotas(tokens_per_day=10))
    assert made.counters(principal) is first
    assert made.counters(principal) is first  # the same object
    # An admin changed the key's quota: its counters follow at once.
    raised = made.counters(key(Quotas(tokens_per_day=20)))
    assert raised[0].limit == 20
    assert made.counters(key(Quotas(tokens_per_day=20))) is raised
    # The tenant directory swapped the tenant's quotas in place.
    tenants["acme"] = Quotas(requests_per_day=4)
    swapped = made.counters(key(Quotas(tokens_per_day=20)))
    assert swapped[1].limit == 4
    del tenants["acme"]
    assert made.counters(key(Quotas(tokens_per_day=20))) == swapped[:1]


def test_the_cache_is_per_kind_id_and_tenant() -> None:
    made, _ = build(tenants={"acme": Quotas(requests_per_day=3), "beta": Quotas(cost_per_day=1)})
    quotas = Limits(quotas=Quotas(tokens_per_day=10))
    seen = [
        made.counters(Principal("x", "acme", "key", limits=quotas)),
        made.counters(Principal("x", "acme", "jwt", limits=quotas)),
        made.counters(Principal("y", "acme", "key", limits=quotas)),
        made.counters(Principal("x", "beta", "key", limits=quotas)),
    ]
    assert [c[0].owner for c in seen] == ["key:1:x", "jwt:1:x", "key:1:y", "key:1:x"]
    assert [c[1].kind for c in seen] == ["requests", "requests", "requests", "cost"]
    # Tenants with no quotas of their own: the counters still carry the key's tenant,
    # the label its metrics are counted under.
    assert made.counters(Principal("x", "none", "key", limits=quotas))[0].tenant == "none"
    assert made.counters(Principal("x", "zero", "key", limits=quotas))[0].tenant == "zero"


def test_the_cache_holds_at_most_max_cached_principals() -> None:
    # MAX_CACHED (10,000) written out: a changed bound must fail here.
    made, _ = build()
    quotas = Limits(quotas=Quotas(requests_per_day=1))
    first = made.counters(Principal("0", "acme", "key", limits=quotas))
    for n in range(1, 10_000):
        made.counters(Principal(str(n), "acme", "key", limits=quotas))
    assert made.counters(Principal("0", "acme", "key", limits=quotas)) is first  # full, kept
    made.counters(Principal("new", "acme", "key", limits=quotas))  # one more: cleared
    again = made.counters(Principal("0", "acme", "key", limits=quotas))
    assert again == first and again is not first


# Grants


def state(
    limit: int, used: int, reserved: int, *, kind: str = "tokens", scope: str = "key"
) -> CounterState:
    counter = Counter(f"{scope}:1:a", scope, "acme", kind, "day", limit)
    return CounterState(counter, window("day", EVE), used, reserved, used)


def test_past_the_soft_mark_is_at_or_past_the_threshold_with_reservations() -> None:
    made, _ = build(soft_threshold=0.8)
    assert made.past_soft_mark(state(100, 50, 30))
    assert not made.past_soft_mark(state(100, 50, 29))
    assert not made.past_soft_mark(state(100, 79, 0))
    assert made.past_soft_mark(state(100, 0, 81))


async def test_a_grant_carries_the_tightest_quota_of_each_kind_and_period() -> None:
    own = Quotas(tokens_per_day=1000, prompt_tokens_per_month=500, cost_per_day=2_000_000)
    made, metrics = build(
        tenants={"acme": Quotas(tokens_per_day=150)},
        prices={"m": Price(Decimal("0.25"), Decimal("1.5"))},
    )
    ticket = await made.admit(key(own), "m", 30, 20)
    assert ticket.grant is not None
    assert ticket.headers == [
        (b"x-ratelimit-limit-tokens-day", b"150"),
        (b"x-ratelimit-remaining-tokens-day", b"100"),
        (b"x-ratelimit-reset-tokens-day", b"10s"),
        (b"x-ratelimit-limit-prompt-tokens-month", b"500"),
        (b"x-ratelimit-remaining-prompt-tokens-month", b"470"),
        (b"x-ratelimit-reset-prompt-tokens-month", b"24h0m10s"),
        (b"x-ratelimit-limit-cost-day", b"2.000000"),
        (b"x-ratelimit-remaining-cost-day", b"1.999962"),  # 30 x 0.25 + 20 x 1.5 = 37.5 -> 38
        (b"x-ratelimit-reset-cost-day", b"10s"),
    ]
    assert ticket.grant.demand.amounts.cost == 38
    assert await usage(made, key(own)) == {
        "key:tokens:day": (0, 50),
        "key:prompt_tokens:month": (0, 30),
        "key:cost:day": (0, 38),
        "tenant:tokens:day": (0, 50),
    }
    assert sample(metrics, ERRORS, action="quota_admit", outcome="closed") is None


async def test_without_any_quota_nothing_is_asked_of_the_backend() -> None:
    made, metrics = build(dead_redis())
    ticket = await made.admit(key(Quotas(), tenant="none"), "m", 10, 10)
    assert ticket == QuotaTicket(None) and ticket.headers == []
    assert not hasattr(ticket, "__dict__")  # slots: one ticket per request, kept small
    await made.finish(ticket, "m", (10, 10))
    await made.cancel(ticket)
    for outcome in ("open", "closed"):
        assert sample(metrics, ERRORS, action="quota_admit", outcome=outcome) is None
    assert sample(metrics, ERRORS, action="quota_settle", outcome="kept") is None


async def test_a_gateway_just_started_asks_the_backend() -> None:
    # A monotonic clock half a second after boot: no pause is pending yet.
    made, _ = build(clock=Clock(0.5))
    ticket = await made.admit(key(Quotas(requests_per_day=1)), "m", 1, 1)
    assert ticket.grant is not None


async def test_the_soft_threshold_is_counted_once_when_crossed() -> None:
    tenants = {"acme": Quotas(requests_per_day=20)}
    made, metrics = build(tenants=tenants, soft_threshold=0.5)
    principal = key(Quotas(requests_per_day=10, tokens_per_day=1000))
    # Series at zero from the start for the tenants' quotas (known at start), none for keys.
    assert sample(metrics, CROSSINGS, **quota_labels("tenant", "day", "requests")) == 0
    assert sample(metrics, REFUSALS, **quota_labels("tenant", "day", "requests")) == 0
    assert sample(metrics, CROSSINGS, **quota_labels("key", "day", "requests")) is None
    for _ in range(4):
        await made.admit(principal, "m", 1, 0)
    assert sample(metrics, CROSSINGS, **quota_labels("key", "day", "requests")) is None
    await made.admit(principal, "m", 1, 0)  # 4 -> 5 of 10: exactly at the threshold
    assert sample(metrics, CROSSINGS, **quota_labels("key", "day", "requests")) == 1
    for _ in range(4):  # 5 -> 9: already past it
        await made.admit(principal, "m", 1, 0)
    assert sample(metrics, CROSSINGS, **quota_labels("key", "day", "requests")) == 1
    assert sample(metrics, CROSSINGS, **quota_labels("key", "day", "tokens")) is None
    await made.admit(principal, "m", 990, 0)  # 9 -> 999 tokens in one step
    assert sample(metrics, CROSSINGS, **quota_labels("key", "day", "requests")) == 1
    assert sample(metrics, CROSSINGS, **quota_labels("key", "day", "tokens")) == 1
    assert sample(metrics, CROSSINGS, **quota_labels("tenant", "day", "requests")) == 1


async def test_a_crossing_undone_or_settled_lower_is_not_counted_again() -> None:
    made, metrics = build(soft_threshold=0.5)
    principal = key(Quotas(tokens_per_day=100))
    labels = quota_labels("key", "day", "tokens")
    first = await made.admit(principal, "m", 60, 0)  # 60 of 100 reserved: past 50
    assert sample(metrics, CROSSINGS, **labels) == 1
    await made.cancel(first)  # another limit refused it: back to 0
    second = await made.admit(principal, "m", 60, 0)
    await made.finish(second, "m", (10, 0))  # used 10, far below again
    await made.admit(principal, "m", 45, 0)  # 55: past it a third time
    assert sample(metrics, CROSSINGS, **labels) == 1  # "once per period", as its help says


# Refusals


async def test_a_refusal_names_the_quota_its_numbers_and_when_it_resets() -> None:
    made, metrics = build()
    principal = key(Quotas(tokens_per_day=100))
    first = await made.admit(principal, "m", 30, 10)
    await made.finish(first, "m", (30, 20))  # used 50
    await made.admit(principal, "m", 10, 10)  # 20 reserved
    with pytest.raises(QuotaExceeded) as refused:
        await made.admit(principal, "m", 25, 15)  # 50 + 20 + 40 > 100
    error = refused.value
    assert isinstance(error, RateLimited)
    assert (error.status, error.code) == (429, "insufficient_quota")
    assert error.kind == "tokens_per_day_quota_exceeded"
    assert error.message == (
        "Quota exceeded: tokens per day of this API key (limit 100, used 50, reserved by "
        f"running requests 20, this request needs 40). It resets at {DAY_END}."
    )
    assert error.headers == {
        "retry-after": "11",
        "retry-after-ms": "10250",
        "x-ratelimit-limit-tokens-day": "100",
        "x-ratelimit-remaining-tokens-day": "30",
        "x-ratelimit-reset-tokens-day": "10s",
    }
    assert json.loads(error.body()) == {
        "error": {
            "message": error.message,
            "type": "tokens_per_day_quota_exceeded",
            "param": None,
            "code": "insufficient_quota",
        }
    }
    assert sample(metrics, REFUSALS, **quota_labels("key", "day", "tokens")) == 1
    # 70 of 100 is below the soft threshold (80), and a refusal charges nothing.
    assert sample(metrics, CROSSINGS, **quota_labels("key", "day", "tokens")) is None
    assert await usage(made, principal) == {"key:tokens:day": (50, 20)}  # nothing charged


async def test_a_cost_refusal_speaks_usd_from_micro_dollars() -> None:
    made, metrics = build(prices={"m": Price(Decimal("0.5"), Decimal(2))})
    principal = key(Quotas(cost_per_day=1000))  # USD 0.001
    for _ in range(2):
        await made.admit(principal, "m", 100, 200)  # 50 + 400 micro-dollars
    with pytest.raises(QuotaExceeded) as refused:
        await made.admit(principal, "m", 100, 200)
    error = refused.value
    assert error.kind == "cost_per_day_quota_exceeded"
    assert error.message == (
        "Quota exceeded: cost per day of this API key (limit USD 0.001000, used USD 0.000000, "
        "reserved by running requests USD 0.000900, this request needs USD 0.000450). "
        f"It resets at {DAY_END}."
    )
    assert error.headers["x-ratelimit-limit-cost-day"] == "0.001000"
    assert error.headers["x-ratelimit-remaining-cost-day"] == "0.000100"
    assert sample(metrics, REFUSALS, **quota_labels("key", "day", "cost")) == 1


@pytest.mark.parametrize(
    ("principal", "tenant", "asked", "kind", "words", "retry"),
    [
        (
            Principal("sub", "acme", "jwt", limits=Limits(quotas=Quotas(requests_per_month=1))),
            Quotas(),
            (1, 1),
            "requests_per_month",
            "requests per month of this token subject (limit 1, used 0, reserved by running "
            f"requests 1, this request needs 1). It resets at {MONTH_END}.",
            ("86411", "86410250"),
        ),
        (
            key(Quotas(prompt_tokens_per_day=1000)),
            Quotas(prompt_tokens_per_day=5),
            (3, 7),
            "prompt_tokens_per_day",
            "prompt tokens per day of this tenant (limit 5, used 0, reserved by running "
            f"requests 3, this request needs 3). It resets at {DAY_END}.",
            ("11", "10250"),
        ),
        (
            key(Quotas(completion_tokens_per_month=10)),
            Quotas(),
            (3, 7),
            "completion_tokens_per_month",
            "completion tokens per month of this API key (limit 10, used 0, reserved by "
            f"running requests 7, this request needs 7). It resets at {MONTH_END}.",
            ("86411", "86410250"),
        ),
    ],
)
async def test_a_refusal_says_whose_quota_and_which(
    principal: Principal,
    tenant: Quotas,
    asked: tuple[int, int],
    kind: str,
    words: str,
    retry: tuple[str, str],
) -> None:
    made, metrics = build(tenants={"acme": tenant})
    await made.admit(principal, "m", *asked)
    with pytest.raises(QuotaExceeded) as refused:
        await made.admit(principal, "m", *asked)
    error = refused.value
    assert error.kind == f"{kind}_quota_exceeded"
    assert error.message == f"Quota exceeded: {words}"
    assert (error.headers["retry-after"], error.headers["retry-after-ms"]) == retry
    counted, period = kind.rsplit("_per_", 1)
    scope = "tenant" if "tenant" in words else principal.kind
    assert sample(metrics, REFUSALS, **quota_labels(scope, period, counted)) == 1


async def test_the_refusing_quota_is_the_one_that_resets_last() -> None:
    made, _ = build()
    principal = key(Quotas(requests_per_day=1, requests_per_month=1))
    await made.admit(principal, "m", 1, 1)
    with pytest.raises(QuotaExceeded) as refused:
        await made.admit(principal, "m", 1, 1)
    assert refused.value.kind == "requests_per_month_quota_exceeded"
    assert refused.value.headers["x-ratelimit-remaining-requests-day"] == "0"
    assert refused.value.headers["x-ratelimit-reset-requests-month"] == "24h0m10s"


def test_amounts_are_counts_except_cost_in_usd() -> None:
    cost = Counter("key:1:a", "key", "acme", "cost", "day", 1)
    tokens = Counter("key:1:a", "key", "acme", "tokens", "day", 1)
    assert _amount(cost, 1_500_000) == "USD 1.500000"
    assert _amount(cost, 1) == "USD 0.000001"
    assert _amount(cost, 0) == "USD 0.000000"
    assert _amount(tokens, 1_500_000) == "1500000"


# Settlement


PRICED = {"m": Price(Decimal("0.25"), Decimal("1.5"))}
EVERY_DAY = Quotas(
    tokens_per_day=10**6,
    prompt_tokens_per_day=10**6,
    completion_tokens_per_day=10**6,
    requests_per_day=10**6,
    cost_per_day=10**6,
)


async def test_finish_settles_each_kind_to_the_real_usage_at_the_models_price() -> None:
    made, _ = build(prices=PRICED)
    principal = key(EVERY_DAY)
    ticket = await made.admit(principal, "m", 40, 60)
    assert await usage(made, principal) == {
        "key:tokens:day": (0, 100),
        "key:prompt_tokens:day": (0, 40),
        "key:completion_tokens:day": (0, 60),
        "key:requests:day": (0, 1),
        "key:cost:day": (0, 100),  # 40 x 0.25 + 60 x 1.5
    }
    await made.finish(ticket, "m", (30, 10))
    assert await usage(made, principal) == {
        "key:tokens:day": (40, 0),
        "key:prompt_tokens:day": (30, 0),
        "key:completion_tokens:day": (10, 0),
        "key:requests:day": (1, 0),
        "key:cost:day": (23, 0),  # 7.5 + 15, rounded up
    }


async def test_unknown_usage_keeps_the_reservation_and_an_unpriced_model_is_free() -> None:
    made, _ = build(prices=PRICED)
    principal = key(EVERY_DAY)
    ticket = await made.admit(principal, "other", 40, 60)
    await made.finish(ticket, "other", None)
    assert await usage(made, principal) == {
        "key:tokens:day": (100, 0),
        "key:prompt_tokens:day": (40, 0),
        "key:completion_tokens:day": (60, 0),
        "key:requests:day": (1, 0),
        "key:cost:day": (0, 0),
    }


async def test_cancel_releases_the_reservation_as_if_no_request_came() -> None:
    made, _ = build(prices=PRICED)
    principal = key(EVERY_DAY)
    await made.cancel(await made.admit(principal, "m", 40, 60))
    assert set((await usage(made, principal)).values()) == {(0, 0)}


async def test_prices_are_copied_when_the_admissions_are_built() -> None:
    table = dict(PRICED)
    made, _ = build(prices=table)
    table["m"] = Price(Decimal(100), Decimal(100))
    ticket = await made.admit(key(EVERY_DAY), "m", 40, 60)
    assert ticket.grant is not None and ticket.grant.demand.amounts.cost == 100
    assert made.prices == PRICED


# The headers


def test_quota_headers_keep_the_first_of_equal_remaining_and_the_least_of_others() -> None:
    tight = state(100, 50, 0)
    loose_equal = state(1000, 900, 50, scope="tenant")  # 50 left too
    assert quota_headers((tight, loose_equal))[:2] == [
        (b"x-ratelimit-limit-tokens-day", b"100"),
        (b"x-ratelimit-remaining-tokens-day", b"50"),
    ]
    tighter = state(1000, 900, 51, scope="tenant")  # 49 left
    assert quota_headers([tight, tighter])[:2] == [
        (b"x-ratelimit-limit-tokens-day", b"1000"),
        (b"x-ratelimit-remaining-tokens-day", b"49"),
    ]
    assert quota_headers([tighter, tight])[:2] == quota_headers([tight, tighter])[:2]
    assert quota_headers([]) == []


def test_quota_headers_write_usd_and_clamp_what_is_left_at_zero() -> None:
    spent = state(1_500_000, 1_400_000, 250_001, kind="cost")
    moment = CounterState(
        Counter("key:1:a", "key", "acme", "completion_tokens", "month", 7),
        window("month", datetime(2026, 1, 31, 23, 59, 59, 750000, tzinfo=UTC).timestamp()),
        3,
        0,
        3,
    )
    assert quota_headers([spent, moment]) == [
        (b"x-ratelimit-limit-cost-day", b"1.500000"),
        (b"x-ratelimit-remaining-cost-day", b"0.000000"),
        (b"x-ratelimit-reset-cost-day", b"10s"),
        (b"x-ratelimit-limit-completion-tokens-month", b"7"),
        (b"x-ratelimit-remaining-completion-tokens-month", b"4"),
        (b"x-ratelimit-reset-completion-tokens-month", b"250ms"),
    ]
    assert quota_headers([state(2_500_001, 0, 1, kind="cost")])[:2] == [
        (b"x-ratelimit-limit-cost-day", b"2.500001"),
        (b"x-ratelimit-remaining-cost-day", b"2.500000"),
    ]


# The backend cannot answer


async def test_failing_open_admits_without_a_grant_and_counts_each_failure() -> None:
    clock = Clock(5000.0)
    made, metrics = build(dead_redis(), fail_open=True, clock=clock)
    principal = key(Quotas(requests_per_day=1))
    ticket = await made.admit(principal, "m", 1, 1)
    assert ticket == QuotaTicket(None) and ticket.headers == []
    assert (await made.admit(principal, "m", 1, 1)).grant is None  # paused: not asked
    clock.now += 1.0
    assert (await made.admit(principal, "m", 1, 1)).grant is None  # asked: failed again
    assert sample(metrics, ERRORS, action="quota_admit", outcome="open") == 3
    assert sample(metrics, ERRORS, action="quota_admit", outcome="closed") is None
    await made.finish(ticket, "m", (1, 1))  # nothing to settle
    assert sample(metrics, ERRORS, action="quota_settle", outcome="kept") is None


async def test_failing_closed_is_a_503_that_says_so() -> None:
    made, metrics = build(dead_redis(), fail_open=False)
    for _ in range(2):
        with pytest.raises(LimiterUnavailable) as unavailable:
            await made.admit(key(Quotas(requests_per_day=1)), "m", 1, 1)
    error = unavailable.value
    assert (error.status, error.code) == (503, "rate_limiter_unavailable")
    assert error.message == "The gateway cannot check quotas right now; try again shortly."
    assert error.headers == {"retry-after": "1"}
    assert sample(metrics, ERRORS, action="quota_admit", outcome="closed") == 2
    assert sample(metrics, ERRORS, action="quota_admit", outcome="open") is None


async def test_the_backend_is_left_alone_for_the_pause_then_asked_again(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    clock = Clock(5000.0)
    backend = RedisQuotas.connect(server.url, timeout_s=2.0, clock=Clock(EVE))
    made, metrics = build(backend, clock=clock)
    principal = key(Quotas(requests_per_day=1))
    try:
        with pytest.raises(LimiterUnavailable):
            await made.admit(principal, "m", 1, 1)  # nothing listens yet
        server.start()
        clock.now += 0.75  # still paused: refused without asking
        with pytest.raises(LimiterUnavailable):
            await made.admit(principal, "m", 1, 1)
        assert sample(metrics, ERRORS, action="quota_admit", outcome="closed") == 2
        clock.now += 0.25  # the pause is over: asked, and Redis answers
        assert (await made.admit(principal, "m", 1, 1)).grant is not None
        with pytest.raises(QuotaExceeded):  # its count is Redis's
            await made.admit(principal, "m", 1, 1)
        # A paused refusal does not restart the pause: only a failed call does.
        server.stop()
        with pytest.raises(LimiterUnavailable):
            await made.admit(principal, "m", 1, 1)
        clock.now += 0.5
        with pytest.raises(LimiterUnavailable):
            await made.admit(principal, "m", 1, 1)
        server.start()
        clock.now += 0.5
        with pytest.raises(QuotaExceeded):  # asked 1 s after the failure, not after 1.5
            await made.admit(principal, "m", 1, 1)
    finally:
        await backend.close()
        server.stop()


async def test_warnings_come_at_most_every_thirty_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock(2.0)  # a monotonic clock two seconds after boot: the first is logged
    made, metrics = build(dead_redis(), fail_open=True, clock=clock)
    principal = key(Quotas(requests_per_day=1))
    with caplog.at_level(logging.WARNING, "gateway.limits"):
        await made.admit(principal, "m", 1, 1)
        clock.now += 0.5  # paused: refused without asking Redis, counted in the next warning
        await made.admit(principal, "m", 1, 1)
        for step in (0.5, 1.0, 1.0):
            clock.now += step  # each at the end of the pause: asked, and failing
            await made.admit(principal, "m", 1, 1)
        clock.now += 26.0  # 29 s after the first warning: still quiet
        await made.admit(principal, "m", 1, 1)
        clock.now += 1.0  # 30 s after it
        await made.admit(principal, "m", 1, 1)
    messages = [r.getMessage() for r in caplog.records if r.name == "gateway.limits"]
    assert len(messages) == 2
    for message, failed in zip(messages, (1, 6), strict=True):
        assert message.startswith(
            f"quota backend unavailable ({failed} failed calls since the last warning),"
            " failing open: could not reserve quotas: "
        )
    assert sample(metrics, ERRORS, action="quota_admit", outcome="open") == 7


async def test_a_settlement_the_backend_misses_is_counted_and_stays_charged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path)
    server.start()
    clock = Clock(5000.0)
    backend = RedisQuotas.connect(server.url, timeout_s=2.0, clock=Clock(EVE))
    made, metrics = build(backend, clock=clock)
    principal = key(Quotas(tokens_per_day=100))
    try:
        first = await made.admit(principal, "m", 10, 20)
        second = await made.admit(principal, "m", 5, 5)
        server.stop()
        with caplog.at_level(logging.WARNING, "gateway.limits"):
            await made.finish(first, "m", (1, 1))  # no exception reaches the request
            await made.cancel(second)
        assert sample(metrics, ERRORS, action="quota_settle", outcome="kept") == 2
        messages = [r.getMessage() for r in caplog.records if r.name == "gateway.limits"]
        assert len(messages) == 1  # the second failure within LOG_EVERY_S is only counted
        assert messages[0].startswith(
            "quota backend unavailable (1 failed calls since the last warning),"
            " reservations stay charged: could not settle quotas: "
        )
        server.start()  # its AOF kept the reservations
        assert await usage(made, principal) == {"key:tokens:day": (0, 40)}
        # Redis failed: admissions pause too, even though it is back at once.
        clock.now += 0.75
        with pytest.raises(LimiterUnavailable):
            await made.admit(principal, "m", 1, 1)
        assert sample(metrics, ERRORS, action="quota_admit", outcome="closed") == 1
        clock.now += 0.25
        assert (await made.admit(principal, "m", 1, 1)).grant is not None
    finally:
        await backend.close()
        server.stop()
