"""SIGTERM and SIGINT in one gateway process: a drain, then the usual close.

1. On the first signal the drain begins (gateway/drain.py): /readyz answers 503
   and every response carries `connection: close`. The listeners still accept
   for `drain.pre_stop_delay` seconds, while load balancers take the process
   out of rotation.
2. The listeners close: a new connection is refused. Idle connections close at
   once, busy ones after their answer.
3. Requests in flight, streams included, have `drain.grace` seconds to finish.
4. Forwarded requests still running are ended (a stream with the mid-stream
   error event, an answer not yet started with 503) and given SETTLE_S to
   settle their limits and usage; anything still running then is cancelled.
5. The servers exit and the app's lifespan closes everything, the usage
   recorder's last flush included. The process exits 0.

uvicorn's own graceful shutdown is what runs in step 5; by then nothing is
left for its `timeout_graceful_shutdown` to cut. A second signal skips what is
left of steps 1 and 3. A signal repeated within REPEAT_AFTER_S of the first
counts once: a supervisor forwarding a signal that the process group (Ctrl+C,
systemd) delivered as well is one request to drain, not two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from gateway.drain import Drain
from gateway.settings import DrainSettings

logger = logging.getLogger("gateway")

SIGNALS = (signal.SIGTERM, signal.SIGINT)
SETTLE_S = 3.0
REPEAT_AFTER_S = 1.0
# What a process may need after the grace: SETTLE_S, uvicorn's own wait for the
# connections (at most SETTLE_S again), then the lifespan's close (the last usage
# write, Redis and trace exports); usually well under a second in all. A supervisor or
# an orchestrator allows pre_stop_delay + grace + SHUTDOWN_MARGIN_S before it kills.
SHUTDOWN_MARGIN_S = 10.0
POLL_S = 0.05


class Listener(Protocol):
    """One uvicorn server, seen by the shutdown."""

    should_exit: bool

    def stop_accepting(self) -> None: ...

    def running(self) -> int:
        """Requests whose ASGI task has not finished."""
        ...

    def cancel_running(self) -> None: ...


class GracefulShutdown:
    def __init__(
        self,
        listeners: Sequence[Listener],
        drain: Drain,
        settings: DrainSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._listeners = listeners
        self._drain = drain
        self._settings = settings
        self._clock = clock
        self._first_signal: float | None = None
        self._signalled = asyncio.Event()
        self._at_once = asyncio.Event()

    def install(self) -> None:
        """Take SIGTERM and SIGINT from uvicorn (see `_Server.capture_signals`)."""
        loop = asyncio.get_running_loop()
        for signum in SIGNALS:
            loop.add_signal_handler(signum, self.on_signal)

    def on_signal(self) -> None:
        now = self._clock()
        if self._first_signal is None:
            self._first_signal = now
            self._signalled.set()
        elif now - self._first_signal >= REPEAT_AFTER_S and not self._at_once.is_set():
            logger.warning("a second signal: ending the drain now")
            self._at_once.set()

    async def run(self) -> None:
        """Wait for the first signal, drain, then tell the servers to exit."""
        await self._signalled.wait()
        settings = self._settings
        self._drain.begin()
        logger.info(
            "draining: /readyz answers 503; accepting for %g s more, then %g s of grace",
            settings.pre_stop_delay,
            settings.grace,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._at_once.wait(), settings.pre_stop_delay)
        for listener in self._listeners:
            listener.stop_accepting()
        logger.info("no longer accepting connections; %d requests in flight", self._running())
        await self._until_idle(settings.grace, interruptible=True)
        if self._running():
            ended = self._drain.interrupt()
            logger.warning("drain: ending %d forwarded requests still running", ended)
            await self._until_idle(SETTLE_S, interruptible=False)
            left = self._running()
            if left:
                logger.warning("drain: cancelling %d requests still running", left)
                for listener in self._listeners:
                    listener.cancel_running()
        logger.info("drained; closing")
        for listener in self._listeners:
            listener.should_exit = True

    def _running(self) -> int:
        return sum(listener.running() for listener in self._listeners)

    async def _until_idle(self, seconds: float, *, interruptible: bool) -> None:
        deadline = self._clock() + seconds
        while self._running() and self._clock() < deadline:
            if interruptible and self._at_once.is_set():
                return
            await asyncio.sleep(POLL_S)
