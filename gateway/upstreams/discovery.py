"""Replicas found by discovery sources (SkyPilot clusters, SkyServe services, DNS), refreshed.

Every `interval` (the source's own, or the gateway's) each source is asked
again. A replica it no longer reports drains: its requests in flight finish
and it gets no new ones. A new one joins after its first healthy check, which
runs at once. A source that cannot be asked keeps the replicas it reported
last: an outage of the SkyPilot API server or of a DNS resolver must not
empty a pool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from gateway.metrics import replica_label
from gateway.tasks import cancel_and_wait
from gateway.upstreams.endpoints import DiscoveryError, EndpointSource
from gateway.upstreams.pool import Pools, Replica

logger = logging.getLogger("gateway.upstreams")
WARN_EVERY_S = 300.0


@dataclass(frozen=True, slots=True)
class Sourced:
    """A source of one model's replicas, and the header its replicas get."""

    source: EndpointSource
    authorization: str | None
    # How often this source is asked; None: the discovery's own interval.
    interval: float | None = None


class Discovery:
    def __init__(
        self,
        pools: Pools,
        sources: Mapping[str, Sequence[Sourced]],
        *,
        interval: float,
        joined: Callable[[list[Replica]], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pools = pools
        self._sources = sources
        self._interval = interval
        self._joined = joined
        self._clock = clock
        self._warned: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._sources:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

    async def _run(self) -> None:
        entries = [(model, entry) for model, some in self._sources.items() for entry in some]
        due_at = [self._clock()] * len(entries)
        while True:
            now = self._clock()
            for index, (model, entry) in enumerate(entries):
                if due_at[index] <= now:
                    due_at[index] = now + (entry.interval or self._interval)
                    await self._ask(model, entry)
            await asyncio.sleep(max(0.0, min(due_at) - self._clock()))

    async def refresh(self) -> None:
        """Ask every source once and update the pools."""
        for model, entries in self._sources.items():
            for entry in entries:
                await self._ask(model, entry)

    async def _ask(self, model: str, entry: Sourced) -> None:
        pool = self._pools.get(model)
        name = entry.source.name
        try:
            urls = await entry.source.endpoints()
        except DiscoveryError as exc:
            self._warn(name, exc)
            return
        before = [(replica, replica.draining) for replica in pool.replicas]
        pool.update(name, urls, entry.authorization)
        known = {id(replica) for replica, _ in before}
        new = [replica for replica in pool.replicas if id(replica) not in known]
        for replica in new:
            logger.info("%s: found replica %s for %s", name, replica_label(replica.url), model)
        # `update` marks a replica draining even when it removes it at once (nothing in flight).
        for replica, was_draining in before:
            if replica.draining and not was_draining:
                label = replica_label(replica.url)
                logger.info("%s: replica %s of %s is gone: drains", name, label, model)
        if new:
            await self._joined(new)

    def _warn(self, name: str, exc: DiscoveryError) -> None:
        now = self._clock()
        if now - self._warned.get(name, -WARN_EVERY_S) >= WARN_EVERY_S:
            self._warned[name] = now
            logger.warning("%s: cannot refresh, keeping its last replicas: %s", name, exc)
