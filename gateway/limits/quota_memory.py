"""The in-process quota backend: one gateway replica, the embedded default.

Same semantics as the Redis backend (quotas.py). Nothing here awaits, so each
admission is atomic on the event loop. Counters of periods that ended more than
GRACE_S ago are dropped as time passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from gateway.limits.periods import window
from gateway.limits.quotas import (
    GRACE_S,
    Amounts,
    Counter,
    CounterState,
    QuotaDemand,
    QuotaGrant,
    QuotaRefusal,
    refusing,
    soft_mark,
)

SWEEP_EVERY_S = 3600.0


class MemoryQuotas:
    """A `QuotaBackend` in this process's memory. CLOCK gives UTC epoch seconds."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # counter key -> [used, reserved, expires at, the highest soft mark crossed or -1]
        self._counts: dict[str, list[int]] = {}
        self._next_sweep = 0.0

    def _states(self, counters: Sequence[Counter], now: float) -> list[CounterState]:
        states = []
        for counter in counters:
            period = window(counter.period, now)
            used, reserved = self._counts.get(_key(counter, period.name), (0, 0))[:2]
            states.append(CounterState(counter, period, used, reserved, used + reserved))
        return states

    async def reserve(self, demand: QuotaDemand) -> QuotaGrant | QuotaRefusal:
        now = self._clock()
        self._sweep(now)
        states = self._states(demand.counters, now)
        refused = refusing(states, demand.amounts)
        if refused is not None:
            return QuotaRefusal(refused, tuple(states))
        charged = []
        for state in states:
            entry = self._entry(_key(state.counter, state.window.name), state.window.end)
            entry[1] += demand.amounts.of(state.counter.kind)
            mark = soft_mark(demand.soft_threshold, state.counter.limit)
            crossed = entry[3] < mark <= entry[0] + entry[1]
            if crossed:
                entry[3] = mark
            charged.append(
                CounterState(
                    state.counter, state.window, state.used, entry[1], state.before, crossed
                )
            )
        return QuotaGrant(demand, tuple(charged))

    async def settle(self, grant: QuotaGrant, used: Amounts | None) -> None:
        reserved = grant.demand.amounts
        for state in grant.states:
            kind = state.counter.kind
            entry = self._entry(_key(state.counter, state.window.name), state.window.end)
            entry[1] = max(0, entry[1] - reserved.of(kind))
            entry[0] += reserved.of(kind) if used is None else used.of(kind)

    async def read(self, counters: Sequence[Counter]) -> list[CounterState]:
        return self._states(counters, self._clock())

    async def close(self) -> None:
        self._counts.clear()

    def __len__(self) -> int:
        """How many counters are held: those of current periods and of the grace."""
        return len(self._counts)

    def _entry(self, key: str, end: float) -> list[int]:
        entry = self._counts.get(key)
        if entry is None:
            entry = self._counts[key] = [0, 0, int(end) + GRACE_S, -1]
        return entry

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY_S
        for key in [key for key, entry in self._counts.items() if entry[2] <= now]:
            del self._counts[key]


def _key(counter: Counter, period: str) -> str:
    return f"{counter.owner}:{counter.kind}:{period}"
