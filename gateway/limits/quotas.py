"""Quotas per UTC day and calendar month: what a request is counted against, what it
reserves, and the protocol the backends keep.

A quota counter holds two numbers for its period: `used` (settled usage) and
`reserved` (admitted requests still running). An admission passes when, for every
counter that applies (the key's and its tenant's), used + reserved + this request's
reservation <= limit; then every counter is charged its reservation, or none is.
When the request ends the reservation is settled to the real usage, in the period
it was admitted in; usage that never arrived keeps the reservation. So replicas
sharing one Redis overshoot a quota by at most the usage above the reservations of
the requests in flight, never by a race.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from gateway.limits.periods import Window
from gateway.principal import Principal, Quotas

# Counters outlive their period by this much, so a request admitted just before the
# end still settles into it, and the admin API can read the period that just ended.
GRACE_S = 86400
UNITS = {
    "tokens": "tokens",
    "prompt_tokens": "tokens",
    "completion_tokens": "tokens",
    "requests": "requests",
    "cost": "micro_usd",
}


@dataclass(frozen=True, slots=True)
class Counter:
    """One quota of one owner: `owner` is unique per key, JWT subject or tenant."""

    owner: str
    scope: str  # "key", "jwt" or "tenant"
    tenant: str
    kind: str  # one of principal.QUOTA_KINDS
    period: str  # "day" or "month"
    limit: int


@dataclass(frozen=True, slots=True)
class Amounts:
    """What a request reserves, or what it used: tokens, requests and micro-dollars."""

    prompt_tokens: int
    completion_tokens: int
    requests: int
    cost: int

    def of(self, kind: str) -> int:
        if kind == "tokens":
            return self.prompt_tokens + self.completion_tokens
        value: int = getattr(self, kind)
        return value


@dataclass(frozen=True, slots=True)
class QuotaDemand:
    """What an admission asks for. With `soft_threshold`, the backend also tells which
    counters this admission took to that share of their limit first in their period."""

    counters: tuple[Counter, ...]
    amounts: Amounts
    soft_threshold: float | None = None


@dataclass(frozen=True, slots=True)
class CounterState:
    """A counter as the backend saw it: `before` is used + reserved before this
    admission; `used` and `reserved` are after it (reserved includes its charge).
    `crossed`: this admission is the first of the period to take used + reserved to
    the demand's soft threshold (once per period, and once more if the limit is raised
    past it)."""

    counter: Counter
    window: Window
    used: int
    reserved: int
    before: int
    crossed: bool = False

    @property
    def remaining(self) -> int:
        return max(0, self.counter.limit - self.used - self.reserved)


@dataclass(frozen=True, slots=True)
class QuotaGrant:
    """An admission: the counters charged, each in the period it was charged to."""

    demand: QuotaDemand
    states: tuple[CounterState, ...]


@dataclass(frozen=True, slots=True)
class QuotaRefusal:
    """A refused admission: the counter that refused (the one that resets last) and
    every counter's state, uncharged."""

    state: CounterState
    states: tuple[CounterState, ...]


class QuotaBackend(Protocol):
    """Quota counters: in-process for one replica, Redis for many. Same semantics.
    Every method raises LimiterBackendError when the backend cannot answer."""

    async def reserve(self, demand: QuotaDemand) -> QuotaGrant | QuotaRefusal:
        """Check every counter and charge them all, atomically, or none."""
        ...

    async def settle(self, grant: QuotaGrant, used: Amounts | None) -> None:
        """Replace the grant's reservation by USED, in the periods it was charged to;
        None (usage unknown) turns the reservation into usage."""
        ...

    async def read(self, counters: Sequence[Counter]) -> list[CounterState]:
        """The counters' current periods, uncharged."""
        ...

    async def close(self) -> None: ...


def soft_mark(threshold: float | None, limit: int) -> int:
    """The use at which a counter passes THRESHOLD of LIMIT; -1 without a threshold."""
    return -1 if threshold is None else math.ceil(threshold * limit)


def refusing(states: Sequence[CounterState], amounts: Amounts) -> CounterState | None:
    """The counter a request must wait longest for, or None when every one has room."""
    found: CounterState | None = None
    for state in states:
        over = state.used + state.reserved + amounts.of(state.counter.kind) > state.counter.limit
        if over and (found is None or state.window.end > found.window.end):
            found = state
    return found


def owner_name(scope: str, owner: str) -> str:
    # Lengths make the name unambiguous whatever characters a tenant or key id holds.
    return f"{scope}:{len(owner)}:{owner}"


def counters_for(principal: Principal, tenant: Quotas | None) -> tuple[Counter, ...]:
    """Every quota counter a request of PRINCIPAL counts against: its own, its tenant's."""
    found = []
    owners = (
        (principal.kind, principal.id, principal.limits.quotas),
        ("tenant", principal.tenant, tenant),
    )
    for scope, owner, quotas in owners:
        if quotas is None:
            continue
        name = owner_name(scope, owner)
        for kind, period, limit in quotas.items():
            found.append(Counter(name, scope, principal.tenant, kind, period, limit))
    return tuple(found)


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million prompt and completion tokens: exactly micro-dollars per token."""

    prompt: Decimal
    completion: Decimal

    def cost(self, prompt_tokens: int, completion_tokens: int) -> int:
        """Micro-dollars, rounded up: a quota is never undercharged by rounding."""
        return math.ceil(self.prompt * prompt_tokens + self.completion * completion_tokens)


FREE = Price(Decimal(0), Decimal(0))


def amounts(
    prices: Mapping[str, Price], model: str, prompt_tokens: int, completion_tokens: int
) -> Amounts:
    """One request's amounts; a model with no price costs nothing."""
    cost = prices.get(model, FREE).cost(prompt_tokens, completion_tokens)
    return Amounts(prompt_tokens, completion_tokens, 1, cost)


def usd_to_micro(usd: float) -> int:
    # Through the decimal text, so 0.1 USD is 100000 micro-dollars, not 100000.00000000001.
    return int(Decimal(repr(usd)) * 1_000_000)
