"""Quotas on the request path: reserve at admission, settle when the request ends,
tell the client where it stands, and refuse with 429 once a period's quota is spent.

A refusal's `type` names the quota, `{kind}_per_{period}_quota_exceeded` (for
instance `tokens_per_day_quota_exceeded`), with OpenAI's `insufficient_quota`
code; `Retry-After` counts to the period's end (00:00 UTC the next day, or the
1st of the next month). A backend failure follows the limits' on_backend_error
policy (admission.py), counted under the action `quota_admit` or `quota_settle`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gateway.limits.admission import LOG_EVERY_S, PAUSE_S, LimiterUnavailable, RateLimited
from gateway.limits.limiter import LimiterBackendError
from gateway.limits.periods import go_duration
from gateway.limits.quota_metrics import QuotaMetrics
from gateway.limits.quotas import (
    Amounts,
    Counter,
    CounterState,
    Price,
    QuotaBackend,
    QuotaDemand,
    QuotaGrant,
    QuotaRefusal,
    amounts,
    counters_for,
    owner_name,
    soft_mark,
)
from gateway.principal import Principal, Quotas

logger = logging.getLogger("gateway.limits")
MAX_CACHED = 10_000
Headers = list[tuple[bytes, bytes]]
NOTHING = Amounts(0, 0, 0, 0)


class QuotaExceeded(RateLimited):
    """429 with OpenAI's code for a spent quota; `type` names which quota."""

    code = "insufficient_quota"


@dataclass(slots=True)
class QuotaTicket:
    """An admitted request's reservation (None: no quota applies, or admitted open)."""

    grant: QuotaGrant | None
    headers: Headers = field(default_factory=list)


class QuotaAdmissions:
    """Reserves and settles quotas through a `QuotaBackend` under the failure policy."""

    def __init__(
        self,
        backend: QuotaBackend,
        metrics: QuotaMetrics,
        *,
        tenants: Mapping[str, Quotas],
        prices: Mapping[str, Price],
        soft_threshold: float,
        fail_open: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        # Read on every request: the tenant directory swaps what it shows when tenants change.
        self.tenants = tenants
        self.soft_threshold = soft_threshold
        self._metrics = metrics
        # Public: usage reports price tokens with this same table (gateway/usage/report.py).
        self.prices = dict(prices)
        self._fail_open = fail_open
        self._clock = clock
        self._paused_until = 0.0
        self._last_log = -math.inf
        self._unlogged = 0  # failed calls since the last warning
        # (kind, id, tenant) -> the principal's and the tenant's Quotas it was built from,
        # and the counters: most requests are of a key seen a moment ago.
        self._counters: dict[
            tuple[str, str, str], tuple[Quotas, Quotas | None, tuple[Counter, ...]]
        ] = {}
        metrics.prepare(
            [
                Counter(owner_name("tenant", tenant), "tenant", tenant, *item)
                for tenant, quotas in self.tenants.items()
                for item in quotas.items()
            ]
        )

    def counters(self, principal: Principal) -> tuple[Counter, ...]:
        """The counters of PRINCIPAL, built once per version of its quotas and its
        tenant's (a changed key or tenant comes with new Quotas)."""
        key = (principal.kind, principal.id, principal.tenant)
        own, tenant = principal.limits.quotas, self.tenants.get(principal.tenant)
        cached = self._counters.get(key)
        # Equal, not only the same: a JWT's principal comes with new (default) Quotas.
        if cached is not None and (cached[0] is own or cached[0] == own) and cached[1] is tenant:
            return cached[2]
        counters = counters_for(principal, tenant)
        if len(self._counters) >= MAX_CACHED:
            self._counters.clear()
        self._counters[key] = (own, tenant, counters)
        return counters

    def past_soft_mark(self, state: CounterState) -> bool:
        """Whether used + reserved is at or past the soft threshold of the limit (the
        mark the backends count crossings of)."""
        return state.used + state.reserved >= soft_mark(self.soft_threshold, state.counter.limit)

    async def admit(
        self, principal: Principal, model: str, prompt_tokens: int, completion_tokens: int
    ) -> QuotaTicket:
        """Raises QuotaExceeded (429) or, failing closed, LimiterUnavailable (503)."""
        counters = self.counters(principal)
        if not counters:
            return QuotaTicket(None)
        if self._clock() < self._paused_until:
            return self._unavailable(None)
        demand = QuotaDemand(
            counters,
            amounts(self.prices, model, prompt_tokens, completion_tokens),
            self.soft_threshold,
        )
        try:
            answer = await self.backend.reserve(demand)
        except LimiterBackendError as exc:
            return self._unavailable(exc)
        if isinstance(answer, QuotaRefusal):
            raise self._refused(answer, demand.amounts)
        for state in answer.states:
            if state.crossed:
                self._metrics.crossed(state.counter)
        return QuotaTicket(answer, quota_headers(answer.states))

    async def finish(self, ticket: QuotaTicket, model: str, usage: tuple[int, int] | None) -> None:
        """Settle to USAGE (prompt, completion tokens); None keeps the reservation."""
        if ticket.grant is not None:
            used = None if usage is None else amounts(self.prices, model, *usage)
            await self._settle(ticket.grant, used)

    async def cancel(self, ticket: QuotaTicket) -> None:
        """Undo an admission entirely (another limit refused the request): it counts as
        no request and no tokens."""
        if ticket.grant is not None:
            await self._settle(ticket.grant, NOTHING)

    async def _settle(self, grant: QuotaGrant, used: Amounts | None) -> None:
        try:
            await self.backend.settle(grant, used)
        except LimiterBackendError as exc:
            # The reservation stays charged until the period ends: never undercounted.
            self._metrics.backend_error("quota_settle", "kept")
            # Admissions leave the backend alone for a while too, as after their own failure.
            self._paused_until = self._clock() + PAUSE_S
            self._warn("reservations stay charged", exc)

    def _warn(self, outcome: str, exc: LimiterBackendError | None) -> None:
        """At most one warning every LOG_EVERY_S, saying how many calls failed since the
        one before: the metric counts every failure."""
        self._unlogged += 1
        now = self._clock()
        if now - self._last_log >= LOG_EVERY_S:
            reason = f": {exc}" if exc is not None else ""
            logger.warning(
                "quota backend unavailable (%d failed calls since the last warning), %s%s",
                self._unlogged,
                outcome,
                reason,
            )
            self._last_log = now
            self._unlogged = 0

    def _unavailable(self, exc: LimiterBackendError | None) -> QuotaTicket:
        outcome = "open" if self._fail_open else "closed"
        self._metrics.backend_error("quota_admit", outcome)
        if exc is not None:
            self._paused_until = self._clock() + PAUSE_S
        self._warn(f"failing {outcome}", exc)
        if self._fail_open:
            return QuotaTicket(None)
        raise LimiterUnavailable(
            "The gateway cannot check quotas right now; try again shortly.",
            headers={"retry-after": str(math.ceil(PAUSE_S))},
        )

    def _refused(self, refusal: QuotaRefusal, asked: Amounts) -> QuotaExceeded:
        state = refusal.state
        counter = state.counter
        self._metrics.refused(counter)
        wait = state.window.reset_s
        reset = datetime.fromtimestamp(state.window.end, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        whose = {"key": "API key", "jwt": "token subject", "tenant": "tenant"}[counter.scope]
        what = counter.kind.replace("_", " ")
        message = (
            f"Quota exceeded: {what} per {counter.period} of this {whose} "
            f"(limit {_amount(counter, counter.limit)}, used {_amount(counter, state.used)}, "
            f"reserved by running requests {_amount(counter, state.reserved)}, this request "
            f"needs {_amount(counter, asked.of(counter.kind))}). It resets at {reset}."
        )
        headers = {
            "retry-after": str(math.ceil(wait)),
            "retry-after-ms": str(math.ceil(wait * 1000)),
        }
        headers.update((k.decode(), v.decode()) for k, v in quota_headers(refusal.states))
        return QuotaExceeded(
            message, kind=f"{counter.kind}_per_{counter.period}_quota_exceeded", headers=headers
        )


def _amount(counter: Counter, value: int) -> str:
    return f"USD {value / 1_000_000:.6f}" if counter.kind == "cost" else str(value)


def quota_headers(states: tuple[CounterState, ...] | list[CounterState]) -> Headers:
    """`x-ratelimit-{limit,remaining,reset}-{kind}-{period}` for each quota that applies,
    from the counter with the least remaining (key or tenant). Costs are in USD."""
    tightest: dict[tuple[str, str], CounterState] = {}
    for state in states:
        slot = (state.counter.kind, state.counter.period)
        if slot not in tightest or state.remaining < tightest[slot].remaining:
            tightest[slot] = state
    headers: Headers = []
    for (kind, period), state in tightest.items():
        suffix = f"{kind.replace('_', '-')}-{period}".encode()
        limit, remaining = state.counter.limit, state.remaining
        if kind == "cost":
            values = (b"%.6f" % (limit / 1e6), b"%.6f" % (remaining / 1e6))
        else:
            values = (b"%d" % limit, b"%d" % remaining)
        headers.append((b"x-ratelimit-limit-" + suffix, values[0]))
        headers.append((b"x-ratelimit-remaining-" + suffix, values[1]))
        headers.append((b"x-ratelimit-reset-" + suffix, go_duration(state.window.reset_s).encode()))
    return headers
