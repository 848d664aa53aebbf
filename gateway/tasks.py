"""Stopping background tasks that may not stop when first told to.

On Python 3.11 `asyncio.wait_for` returns the inner result instead of raising when
a cancel lands just as the inner operation completes: the cancel is lost. redis-py
wraps every write in `wait_for` (its socket timeout), so a `while True` loop that
talks to Redis, cancelled once, can go on for ever, and whoever awaits it waits for
ever too. `cancel_and_wait` cancels again until the tasks have ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

# How long to wait for a cancelled task before cancelling it again.
RECANCEL_AFTER_S = 0.05


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel the tasks and return once every one has ended; what they raised is
    retrieved (so asyncio does not report it as never retrieved) and dropped."""
    every = list(tasks)
    pending = {task for task in every if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_AFTER_S)
    for task in every:
        if not task.cancelled():
            task.exception()
