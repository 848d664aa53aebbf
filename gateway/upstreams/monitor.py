"""Background checks of every replica: `/health` (and the models it serves), and its load.

Health checks run every `health.interval`: `healthy_threshold` passes in a row
bring a replica in (a discovered one joins only then), `unhealthy_threshold`
failures take it out, and a pass also lets back a replica that was ejected for
failing requests. With load-aware picking or load shedding on, each replica's
`/metrics` is read every `load.scrape_interval` for vLLM's own gauges.
Every check has its own timeout, so a replica that stalls delays nobody else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import aiohttp
import orjson
from prometheus_client import Gauge

from gateway.metrics import replica_label
from gateway.settings import UpstreamSettings
from gateway.tasks import cancel_and_wait
from gateway.upstreams.pool import Load, Pools, Replica

logger = logging.getLogger("gateway.upstreams")

_GAUGES = {
    b"vllm:num_requests_waiting": "waiting",
    b"vllm:num_requests_running": "running",
    b"vllm:kv_cache_usage_perc": "kv_cache",
}


def parse_load(text: bytes, now: float) -> Load | None:
    """vLLM's three load gauges from Prometheus text, summed over their label sets
    (one per engine); None when the replica exposes none of them."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split(b"{", 1)[0].split(b" ", 1)[0]
        field = _GAUGES.get(name)
        if field is None:
            continue
        try:
            value = float(line.rsplit(b" ", 1)[1])
        except (IndexError, ValueError):
            continue
        found[field] = found.get(field, 0.0) + value
    if "waiting" not in found and "running" not in found:
        return None
    return Load(found.get("waiting", 0.0), found.get("running", 0.0), found.get("kv_cache"), now)


def served_models(body: bytes) -> frozenset[str]:
    """The ids in a `/v1/models` answer; empty for anything else."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return frozenset()
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list):
        return frozenset()
    return frozenset(
        card["id"] for card in data if isinstance(card, dict) and isinstance(card.get("id"), str)
    )


class ReplicaMonitor:
    """Health and load checks for every replica of `pools`, on the shared upstream session."""

    def __init__(
        self,
        pools: Pools,
        session: Callable[[], aiohttp.ClientSession],
        settings: UpstreamSettings,
        *,
        watch_load: bool,
        replica_up: Gauge | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pools = pools
        self._session = session
        self._settings = settings
        self._watch_load = watch_load
        self._replica_up = replica_up
        self._published: set[tuple[str, str]] = set()
        self._clock = clock
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(
            loop.create_task(self._every(self._settings.health.interval, self.check_all))
        )
        if self._watch_load:
            interval = self._settings.load.scrape_interval
            self._tasks.append(loop.create_task(self._every(interval, self.scrape_all)))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks.clear()

    async def _every(self, interval: float, action: Callable[[], Awaitable[None]]) -> None:
        while True:
            await action()
            await asyncio.sleep(interval)

    async def check_all(self, replicas: Iterable[Replica] | None = None) -> None:
        targets = list(self._pools.replicas() if replicas is None else replicas)
        await asyncio.gather(*(self.check(replica) for replica in targets))
        self.publish()

    def publish(self) -> None:
        """`gateway_replica_up` for every replica of every pool; gone replicas are dropped."""
        if self._replica_up is None:
            return
        seen: set[tuple[str, str]] = set()
        for pool in self._pools.configured():
            for replica in pool.replicas:
                labels = (pool.model, replica_label(replica.url))
                seen.add(labels)
                self._replica_up.labels(*labels).set(1 if replica.usable else 0)
        for labels in self._published - seen:
            self._replica_up.remove(*labels)
        self._published = seen

    async def scrape_all(self) -> None:
        await asyncio.gather(*(self.scrape(replica) for replica in self._pools.replicas()))

    async def check(self, replica: Replica) -> None:
        health = self._settings.health
        ok = False
        try:
            status, _ = await self._get(replica, "/health")
            ok = status == 200
            if ok:
                status, body = await self._get(replica, "/v1/models")
                if status == 200:
                    replica.models = served_models(body)
        except (aiohttp.ClientError, TimeoutError, OSError):
            ok = False
        now = self._clock()
        if ok and replica.check_passed(health.healthy_threshold, now):
            logger.info("replica %s is up (%s)", replica_label(replica.url), replica.source)
        elif not ok and replica.check_failed(health.unhealthy_threshold, now):
            logger.warning(
                "replica %s is down: its /health checks fail", replica_label(replica.url)
            )

    async def scrape(self, replica: Replica) -> None:
        try:
            status, body = await self._get(replica, "/metrics")
        except (aiohttp.ClientError, TimeoutError, OSError):
            return  # the reading ages out; health checks decide about the replica
        if status == 200:
            replica.load = parse_load(body, self._clock())

    async def _get(self, replica: Replica, path: str) -> tuple[int, bytes]:
        headers = {"Authorization": replica.authorization} if replica.authorization else {}
        async with self._session().get(
            replica.url_for(path, b""),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self._settings.health.timeout),
        ) as response:
            return response.status, await response.read()
