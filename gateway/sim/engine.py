"""The simulated engine: vLLM's batch limit, token pacing and per-request metrics."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from http import HTTPStatus
from types import TracebackType

from gateway.sim.errors import SimError
from gateway.sim.metrics import SimMetrics
from gateway.sim.prefix_cache import PrefixCache

# vLLM 0.32's QueueOverflowError message, word for word.
QUEUE_OVERFLOW = (
    "The engine is currently busy and cannot accept new requests. "
    "Please try again later or on a different instance."
)


class Scheduler:
    """vLLM's `--max-num-seqs`: at most N sequences run; the rest wait, first come first served.

    A request with several sequences (n > 1, a batched prompt) takes its slots
    all at once, so two such requests can never each hold half of what the
    other waits for.
    """

    def __init__(
        self, max_num_seqs: int, metrics: SimMetrics, max_queued: int | None = None
    ) -> None:
        self.capacity = max_num_seqs
        self._max_queued = max_queued
        self._metrics = metrics
        self._running = 0
        self._waiters: deque[tuple[asyncio.Future[None], int]] = deque()

    def check_queue(self) -> None:
        """vLLM's QueueOverflowError: refused before the engine sees the request."""
        if self._max_queued is None or self._running < self.capacity:
            return
        if len(self._waiters) >= self._max_queued:
            raise SimError(HTTPStatus.SERVICE_UNAVAILABLE, QUEUE_OVERFLOW)

    async def acquire(self, slots: int = 1) -> None:
        if self._running + slots <= self.capacity and not self._waiters:
            self._running += slots
            self._publish()
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (waiter, slots)
        self._waiters.append(entry)
        self._publish()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # The slots were handed over just as the request was cancelled: pass them on.
                self.release(slots)
            elif entry in self._waiters:
                self._waiters.remove(entry)
                # The head of the queue may have been what held the others back.
                self._grant()
            raise

    def release(self, slots: int = 1) -> None:
        """Free SLOTS and hand them to the oldest live waiters that now fit."""
        self._running -= slots
        self._grant()

    def _grant(self) -> None:
        while self._waiters:
            waiter, slots = self._waiters[0]
            # A waiter cancelled since it queued has not yet removed itself: skip it.
            if waiter.done():
                self._waiters.popleft()
                continue
            if self._running + slots > self.capacity:
                break
            self._waiters.popleft()
            self._running += slots
            waiter.set_result(None)
        self._publish()

    def _publish(self) -> None:
        waiting = sum(slots for _, slots in self._waiters)
        self._metrics.set_load(self._running, waiting, self.capacity)


class Sequence:
    """One request inside the engine, from admission to finish or abort.

    Used as `async with`: entering waits for a slot, leaving frees it and
    records the outcome. Leaving without `finish()` (client gone, task
    cancelled, send failed, a simulated crash) is an abort: as in vLLM 0.32, its generated
    tokens are counted but the request is not, under no `finished_reason`
    (vLLM exports `abort` and leaves it at 0 for a client that left).
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

    async def __aenter__(self) -> Sequence:
        await self._engine.scheduler.acquire()  # a cancel while waiting counts nothing
        self.admit()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._engine.scheduler.release()
        self.record()

    def admit(self) -> None:
        """The sequence got its slot: its prompt is prefilled now."""
        self._engine.metrics.prompt_tokens.inc(self._prompt_tokens)
        self._due = time.perf_counter()

    def record(self) -> None:
        """Count the sequence's tokens and how it ended, once its slot is freed."""
        metrics = self._engine.metrics
        if self.generated:
            metrics.generation_tokens.inc(self.generated)
        if self._reason is not None:
            metrics.finished[self._reason].inc()
            metrics.e2e.observe(time.perf_counter() - self._arrival)

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

    def delay_first_token(self, seconds: float) -> None:
        """Prefill work on top of the TTFT knob (before the first token only)."""
        if not self.generated:
            self._ttft_s += seconds


class SequenceGroup:
    """The sequences of one request with n > 1 or a batched prompt, admitted together.

    vLLM runs each as an engine request of its own (a batched prompt is one
    request per prompt; n > 1 is a parent request fanned out into n child
    requests), and its metrics count each of them: prompt tokens once per
    sequence, every generated token, one finished request per sequence. The
    group holds one slot per sequence, at most the whole batch: a request with
    more sequences than `--max-num-seqs` runs them all on the full batch,
    where vLLM would run them in waves.
    """

    def __init__(self, engine: Engine, sequences: list[Sequence]) -> None:
        self._engine = engine
        self.sequences = sequences
        self._slots = min(len(sequences), engine.scheduler.capacity)

    async def __aenter__(self) -> list[Sequence]:
        await self._engine.scheduler.acquire(self._slots)
        for sequence in self.sequences:
            sequence.admit()
        return self.sequences

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._engine.scheduler.release(self._slots)
        for sequence in self.sequences:
            sequence.record()


class Engine:
    def __init__(
        self,
        max_num_seqs: int,
        metrics: SimMetrics,
        max_queued: int | None = None,
        *,
        prefill_s_per_token: float = 0.0,
    ) -> None:
        self.metrics = metrics
        self.scheduler = Scheduler(max_num_seqs, metrics, max_queued)
        self.prefix_cache = PrefixCache()
        self._prefill_s_per_token = prefill_s_per_token

    def prefill(self, sequence: Sequence, prompt_text: str, prompt_tokens: int) -> None:
        """An admitted prompt looked up in the prefix cache and counted as vLLM does; the
        tokens not found delay SEQUENCE's first token by the prefill time per token."""
        hits = min(self.prefix_cache.lookup(prompt_text.split()), prompt_tokens)
        self.metrics.prefix_cache_queries.inc(prompt_tokens)
        self.metrics.prefix_cache_hits.inc(hits)
        sequence.delay_first_token((prompt_tokens - hits) * self._prefill_s_per_token)

    def sequence(
        self, prompt_tokens: int, ttft_ms: float, itl_ms: float, arrival: float
    ) -> Sequence:
        """A request that arrived at ARRIVAL (`time.perf_counter()`), not yet admitted;
        SimError (503) when the queue is full."""
        self.scheduler.check_queue()
        return Sequence(self, prompt_tokens, ttft_ms / 1000, itl_ms / 1000, arrival)

    def group(
        self, prompt_tokens: list[int], ttft_ms: float, itl_ms: float, arrival: float
    ) -> SequenceGroup:
        """One sequence per entry of PROMPT_TOKENS (its prompt's length), admitted
        together; SimError (503) when the queue is full."""
        self.scheduler.check_queue()
        ttft_s, itl_s = ttft_ms / 1000, itl_ms / 1000
        sequences = [Sequence(self, tokens, ttft_s, itl_s, arrival) for tokens in prompt_tokens]
        return SequenceGroup(self, sequences)
