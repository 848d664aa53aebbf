"""The simulated engine: vLLM's batch limit, token pacing and per-request metrics."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from http import HTTPStatus
from types import TracebackType

from gateway.sim.errors import SimError
from gateway.sim.metrics import SimMetrics

# vLLM 0.32's QueueOverflowError message, word for word.
QUEUE_OVERFLOW = (
    "The engine is currently busy and cannot accept new requests. "
    "Please try again later or on a different instance."
)


class Scheduler:
    """vLLM's `--max-num-seqs`: at most N sequences run; the rest wait, first come first served."""

    def __init__(
        self, max_num_seqs: int, metrics: SimMetrics, max_queued: int | None = None
    ) -> None:
        self._capacity = max_num_seqs
        self._max_queued = max_queued
        self._metrics = metrics
        self._running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def check_queue(self) -> None:
        """vLLM's QueueOverflowError: refused before the engine sees the request."""
        if self._max_queued is None or self._running < self._capacity:
            return
        if len(self._waiters) >= self._max_queued:
            raise SimError(HTTPStatus.SERVICE_UNAVAILABLE, QUEUE_OVERFLOW)

    async def acquire(self) -> None:
        if self._running < self._capacity and not self._waiters:
            self._running += 1
            self._publish()
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._publish()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over just as the request was cancelled: pass it on.
                self.release()
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
                self._publish()
            raise

    def release(self) -> None:
        """Hand the slot to the oldest live waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            # A waiter cancelled since it queued has not yet removed itself: skip it.
            if not waiter.done():
                waiter.set_result(None)
                self._publish()
                return
        self._running -= 1
        self._publish()

    def _publish(self) -> None:
        self._metrics.set_load(self._running, len(self._waiters), self._capacity)


class Sequence:
    """One request inside the engine, from admission to finish, abort or crash.

    Used as `async with`: entering waits for a slot, leaving frees it and
    records the outcome. Leaving without `finish()` or `crash()` (client gone,
    task cancelled, send failed) counts as an abort, as in vLLM.
    """

    def __init__(
        self, engine: Engine, prompt_tokens: int, ttft_s: float, itl_s: float, arrival: float
    ) -> None:
        self._engine = engine
        self._prompt_tokens = prompt_tokens
        self._ttft_s = ttft_s
        self._itl_s = itl_s
        self._arrival = arrival
        self._last = arrival
        self._due = arrival
        self.generated = 0
        self._reason: str | None = None
        self._crashed = False

    async def __aenter__(self) -> Sequence:
        try:
            await self._engine.scheduler.acquire()
        except asyncio.CancelledError:
            # vLLM counts a request aborted while it waited, too.
            self._engine.metrics.finished["abort"].inc()
            raise
        self._engine.metrics.prompt_tokens.inc(self._prompt_tokens)
        self._due = time.perf_counter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._engine.scheduler.release()
        metrics = self._engine.metrics
        if self.generated:
            metrics.generation_tokens.inc(self.generated)
        if self._reason is not None:
            metrics.finished[self._reason].inc()
            metrics.e2e.observe(time.perf_counter() - self._arrival)
        elif not self._crashed:
            metrics.finished["abort"].inc()

    async def next_token(self) -> None:
        """Wait until the next token is due (TTFT for the first, ITL after), then count it."""
        delay = self._itl_s if self.generated else self._ttft_s
        if delay > 0:
            # Deadlines, not plain sleeps, so pacing does not drift over a long reply.
            self._due += delay
            wait = self._due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
        now = time.perf_counter()
        if self.generated:
            self._engine.metrics.itl.observe(now - self._last)
        else:
            self._engine.metrics.ttft.observe(now - self._arrival)
        self._last = now
        self.generated += 1

    async def pool(self) -> None:
        """An embedding's processing time: the TTFT delay, no tokens generated."""
        if self._ttft_s > 0:
            await asyncio.sleep(self._ttft_s)

    def finish(self, reason: str) -> None:
        self._reason = reason

    def crash(self) -> None:
        """Mark a simulated crash (connection dropped): counted neither as finished nor aborted."""
        self._crashed = True


class Engine:
    def __init__(
        self, max_num_seqs: int, metrics: SimMetrics, max_queued: int | None = None
    ) -> None:
        self.metrics = metrics
        self.scheduler = Scheduler(max_num_seqs, metrics, max_queued)

    def sequence(
        self, prompt_tokens: int, ttft_ms: float, itl_ms: float, arrival: float
    ) -> Sequence:
        """A request that arrived at ARRIVAL (`time.perf_counter()`), not yet admitted;
        SimError (503) when the queue is full."""
        self.scheduler.check_queue()
        return Sequence(self, prompt_tokens, ttft_ms / 1000, itl_ms / 1000, arrival)
