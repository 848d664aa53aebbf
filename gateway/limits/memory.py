"""The in-process limits backend: one gateway replica, the embedded default.

It keeps exactly the semantics of the Redis backend (see limiter.py) with the
process's own clock. Nothing here awaits, so each admission is atomic on the
event loop; leases need no expiry, since they die with the process.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from gateway.limits.limiter import (
    WINDOW_S,
    Demand,
    Grant,
    Quota,
    Refusal,
    charges,
    tighter,
)

CONCURRENCY_RETRY_S = 1.0


class SlidingWindow:
    """Amounts per one-second slot; the sum over the last WINDOW_S slots is what counts.

    Slots are kept oldest first with a running total, so an admission costs
    O(1) however busy the minute was.
    """

    def __init__(self) -> None:
        self.slots: deque[list[int]] = deque()  # [slot, amount], oldest first
        self.total = 0

    def used(self, now_slot: int) -> int:
        oldest = now_slot - WINDOW_S + 1
        slots = self.slots
        while slots and slots[0][0] < oldest:
            self.total -= slots.popleft()[1]
        return self.total

    def add(self, slot: int, amount: int) -> None:
        slots = self.slots
        if slots and slots[-1][0] == slot:
            slots[-1][1] += amount
        else:
            slots.append([slot, amount])
        self.total += amount

    def adjust(self, slot: int, delta: int) -> bool:
        """Add DELTA (not below zero) to SLOT if it is still kept; False if it is not."""
        for entry in reversed(self.slots):
            if entry[0] == slot:
                new = max(0, entry[1] + delta)
                self.total += new - entry[1]
                entry[1] = new
                return True
            if entry[0] < slot:
                break
        return False

    def wait_s(self, now: float, need: int, limit: int) -> float:
        """Seconds until enough of the window has left it for NEED more."""
        freed = 0
        for slot, amount in self.slots:
            freed += amount
            if self.total - freed + need <= limit:
                return slot + WINDOW_S - now
        return float(WINDOW_S)

    def reset_s(self, now: float) -> float:
        """Seconds until the window is empty again."""
        newest = self.slots[-1][0] if self.slots else int(now)
        return newest + WINDOW_S - now


class MemoryRateLimiter:
    """A `RateLimiter` in this process's memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, SlidingWindow] = {}
        self._leases: dict[str, set[str]] = {}

    def _window(self, name: str) -> SlidingWindow:
        window = self._windows.get(name)
        if window is None:
            window = self._windows[name] = SlidingWindow()
        return window

    async def admit(self, demand: Demand, lease: str) -> Grant | Refusal:
        now = self._clock()
        slot = int(now)
        refusal: Refusal | None = None
        requests: Quota | None = None
        tokens: Quota | None = None
        for bucket, charge in zip(demand.buckets, charges(demand), strict=True):
            rates = bucket.rates
            for kind, limit, need in (
                ("requests", rates.requests_per_minute, 1),
                ("tokens", rates.tokens_per_minute, charge),
            ):
                if limit is None:
                    continue
                window = self._window(f"{bucket.name}:{kind[0]}")
                used = window.used(slot)
                quota = Quota(limit, max(0, limit - used - need), window.reset_s(now))
                if kind == "requests":
                    requests = tighter(requests, quota)
                else:
                    tokens = tighter(tokens, quota)
                if limit == 0 or used + need > limit:
                    wait = window.wait_s(now, need, limit) if limit else float(WINDOW_S)
                    refusal = _longer(refusal, Refusal(bucket, kind, wait))
            held = self._leases.get(bucket.name, set())
            limit = rates.concurrent_requests
            if limit is not None and len(held) >= limit:
                refusal = _longer(
                    refusal, Refusal(bucket, "concurrent_requests", CONCURRENCY_RETRY_S)
                )
        if refusal is not None:
            return Refusal(refusal.bucket, refusal.kind, refusal.retry_after_s, requests, tokens)
        self._charge(demand, slot, lease)
        return Grant(demand, slot, lease, _after_charge(requests, now), _after_charge(tokens, now))

    def _charge(self, demand: Demand, slot: int, lease: str) -> None:
        for bucket, charge in zip(demand.buckets, charges(demand), strict=True):
            rates = bucket.rates
            if rates.requests_per_minute is not None:
                self._window(f"{bucket.name}:r").add(slot, 1)
            if rates.tokens_per_minute is not None:
                self._window(f"{bucket.name}:t").add(slot, charge)
            if rates.concurrent_requests is not None:
                self._leases.setdefault(bucket.name, set()).add(lease)

    async def finish(self, grant: Grant, tokens_used: int | None) -> None:
        now_slot = int(self._clock())
        demand = grant.demand
        for bucket, charge in zip(demand.buckets, charges(demand), strict=True):
            held = self._leases.get(bucket.name)
            if held is not None:
                held.discard(grant.lease)
                if not held:
                    del self._leases[bucket.name]
            if bucket.rates.tokens_per_minute is not None and tokens_used is not None:
                _settle(
                    self._window(f"{bucket.name}:t"), grant.slot, now_slot, tokens_used - charge
                )

    async def close(self) -> None:
        self._windows.clear()
        self._leases.clear()


def _settle(window: SlidingWindow, slot: int, now_slot: int, delta: int) -> None:
    """Move the reservation to the real usage in its own slot; once that slot has left
    the window, only an overrun is still charged, to the current one."""
    window.used(now_slot)  # drops the slots that left the window
    if not window.adjust(slot, delta) and delta > 0:
        window.add(now_slot, delta)


def _longer(current: Refusal | None, candidate: Refusal) -> Refusal:
    if current is None or candidate.retry_after_s > current.retry_after_s:
        return candidate
    return current


def _after_charge(quota: Quota | None, now: float) -> Quota | None:
    # A grant was just charged to the current slot: the window empties a minute from now.
    return None if quota is None else Quota(quota.limit, quota.remaining, WINDOW_S - now % 1)
