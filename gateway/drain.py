"""The drain state of one gateway process, shared by the parts that act on it.

`begin` is called on the first SIGTERM or SIGINT (gateway/cli/shutdown.py):
from then on `/readyz` answers 503 ("draining") and every response leaves
with `connection: close`, so load balancers and kept-alive clients move to
other replicas while this one finishes its work.

Each forwarded request registers the object that can interrupt it (`track`).
When the grace period ends, `interrupt` asks every one still running to end
itself the documented way: a started stream with one `data: {"error": ...}`
event, an answer not yet started with a 503; the request's own `finally` then
settles its tokens, records its usage and releases its concurrency lease. A
request that registers after that is interrupted at once.
"""

from __future__ import annotations

from typing import Protocol

DRAINING = "draining"


class Interruptible(Protocol):
    def interrupt_for_drain(self) -> None:
        """End the request the drain's way; a request already ending ignores it."""


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self.interrupted = False
        self._running: set[Interruptible] = set()

    def begin(self) -> None:
        self.draining = True

    def track(self, request: Interruptible) -> None:
        if self.interrupted:
            request.interrupt_for_drain()
        self._running.add(request)

    def untrack(self, request: Interruptible) -> None:
        self._running.discard(request)

    @property
    def running(self) -> int:
        return len(self._running)

    def interrupt(self) -> int:
        """End every tracked request; how many there were."""
        self.draining = self.interrupted = True
        running = list(self._running)
        for request in running:
            request.interrupt_for_drain()
        return len(running)
