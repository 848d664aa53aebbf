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


# The counted kinds, in the order of a bucket's pair of windows.
KINDS = ("requests", "tokens")
# The tightest window of one kind so far: (remaining, limit, window).
Tightest = tuple[int, int, SlidingWindow]


class MemoryRateLimiter:
    """A `RateLimiter` in this process's memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # Bucket name -> its (requests, tokens) windows: found with one lookup per bucket.
        self._windows: dict[str, tuple[SlidingWindow, SlidingWindow]] = {}
        self._leases: dict[str, set[str]] = {}

    def _pair(self, name: str) -> tuple[SlidingWindow, SlidingWindow]:
        pair = self._windows.get(name)
        if pair is None:
            pair = self._windows[name] = (SlidingWindow(), SlidingWindow())
        return pair

    async def admit(self, demand: Demand, lease: str) -> Grant | Refusal:
        now = self._clock()
        slot = int(now)
        refusal: Refusal | None = None
        # Only the tightest window of each kind becomes a Quota, once, at the end.
        tightest: list[Tightest | None] = [None, None]
        for bucket, charge in zip(demand.buckets, charges(demand), strict=True):
            rates, pair = bucket.rates, self._pair(bucket.name)
            needs = ((rates.requests_per_minute, 1), (rates.tokens_per_minute, charge))
            for index, (limit, need) in enumerate(needs):
                if limit is None:
                    continue
                window = pair[index]
                used = window.used(slot)
                remaining = max(0, limit - used - need)
                best = tightest[index]
                if best is None or remaining < best[0]:
                    tightest[index] = (remaining, limit, window)
                if limit == 0 or used + need > limit:
                    wait = window.wait_s(now, need, limit) if limit else float(WINDOW_S)
                    refusal = _longer(refusal, Refusal(bucket, KINDS[index], wait))
            held = self._leases.get(bucket.name)
            limit = rates.concurrent_requests
            if limit is not None and (0 if held is None else len(held)) >= limit:
                refusal = _longer(
                    refusal, Refusal(bucket, "concurrent_requests", CONCURRENCY_RETRY_S)
                )
        requests, tokens = tightest
        if refusal is not None:
            return Refusal(
                refusal.bucket,
                refusal.kind,
                refusal.retry_after_s,
                _refused_quota(requests, now),
                _refused_quota(tokens, now),
            )
        self._charge(demand, slot, lease)
        granted = _granted_quota(requests, now), _granted_quota(tokens, now)
        return Grant(demand, slot, lease, *granted)

    def _charge(self, demand: Demand, slot: int, lease: str) -> None:
        for bucket, charge in zip(demand.buckets, charges(demand), strict=True):
            rates, pair = bucket.rates, self._pair(bucket.name)
            if rates.requests_per_minute is not None:
                pair[0].add(slot, 1)
            if rates.tokens_per_minute is not None:
                pair[1].add(slot, charge)
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
                tokens = self._pair(bucket.name)[1]
                _settle(tokens, grant.slot, now_slot, tokens_used - charge)

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


def _refused_quota(tightest: Tightest | None, now: float) -> Quota | None:
    if tightest is None:
        return None
    remaining, limit, window = tightest
    return Quota(limit, remaining, window.reset_s(now))


def _granted_quota(tightest: Tightest | None, now: float) -> Quota | None:
    # A grant was just charged to the current slot: the window empties a minute from now.
    return None if tightest is None else Quota(tightest[1], tightest[0], WINDOW_S - now % 1)
