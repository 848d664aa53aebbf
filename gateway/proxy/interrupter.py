"""Who may end a forwarding task early, and why: the client left or stopped reading,
the replica went quiet, or the gateway's shutdown ran out of grace."""

from __future__ import annotations

import asyncio
import time

from gateway.asgi import Receive

DISCONNECT = "client disconnected"
TIMEOUT = "upstream timeout"
CLIENT_STALL = "client stopped reading"
DRAINED = "the gateway is shutting down"
WATCH_AFTER = 0.05


class Interrupter:
    """Cancels the forwarding task when the client leaves, stops reading, the replica
    goes quiet, or the shutdown's grace ends (`interrupt_for_drain`).

    One timer checks two timestamps the relay keeps: the end of the last write
    (`last`) and the start of the write being awaited (`writing_since`, 0.0
    when none is). A chunk costs two attribute stores, not a timer. While a
    write is pending the replica's silence is not its fault (the gateway is not
    reading), so only the client's write limit applies then. The task that waits
    for `http.disconnect` starts only once a request has run for WATCH_AFTER
    seconds: quick answers never pay for it, and a client that leaves is still
    noticed within that delay. Times are `time.perf_counter()` readings.
    """

    __slots__ = (
        "_loop",
        "_receive",
        "_task",
        "_timer",
        "_watcher",
        "last",
        "limit",
        "reason",
        "write_limit",
        "writing_since",
    )

    def __init__(self, receive: Receive, limit: float, write_limit: float) -> None:
        loop = self._loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        self._task = task
        self._receive = receive
        self._watcher: asyncio.Task[None] | None = None
        self.reason: str | None = None
        self.limit = limit
        self.write_limit = write_limit
        self.last = time.perf_counter()
        self.writing_since = 0.0
        self._timer = self._loop.call_later(min(limit, WATCH_AFTER), self._check)

    def set_limit(self, limit: float) -> None:
        self.limit = limit
        self.last = time.perf_counter()
        first_check = limit if self._watcher is not None else min(limit, WATCH_AFTER)
        # The usual request is under WATCH_AFTER old here: its first timer still fires in
        # time and reads the new limit then, so it is kept rather than replaced.
        if self._timer.when() > self._loop.time() + first_check:
            self._timer.cancel()
            self._timer = self._loop.call_later(first_check, self._check)

    def _check(self) -> None:
        if self._watcher is None and self.reason is None:
            self._watcher = self._loop.create_task(self._watch())
        now = time.perf_counter()
        since = self.writing_since
        if since:
            due, reason, other = since + self.write_limit, CLIENT_STALL, now + self.limit
        else:
            due, reason, other = self.last + self.limit, TIMEOUT, now + self.write_limit
        if now < due:
            # The other limit may start to apply before DUE: look again by then.
            self._timer = self._loop.call_later(min(due, other) - now, self._check)
        else:
            self._fire(reason)

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._fire(DISCONNECT)

    def interrupt_for_drain(self) -> None:
        self._fire(DRAINED)

    def _fire(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self._task.cancel()

    def stop(self) -> None:
        """Called once the last message is sent, so nothing can fire after the response."""
        self.reason = self.reason or "stopped"
        self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()

    def claim(self) -> str | None:
        """After a CancelledError: the reason if we caused it (and the task goes on)."""
        if self.reason in (DISCONNECT, TIMEOUT, CLIENT_STALL, DRAINED):
            self._task.uncancel()
            return self.reason
        return None
