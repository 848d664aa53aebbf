"""The upstreams route of the admin API: each configured model's replicas and their health.

A read of the gateway's live pools, so it writes no audit entry. A replica's
`authorization` (its vLLM API key) is never read here, and credentials written
into a replica's URL are blanked: the answer may be pasted into a ticket.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter

from gateway.admin.keys import Admin
from gateway.admin.schemas import LoadOut, ModelUpstreams, ReplicaOut, UpstreamsOut
from gateway.upstreams.pool import Pool, Pools, Replica

REDACTED = "[redacted]"


@dataclass(frozen=True, slots=True)
class UpstreamRoutes:
    """The handler, bound to the gateway's pools (None: a gateway without any); `router()`
    mounts it. `clock` is the one replicas' check and load times were taken with."""

    pools: Pools | None
    clock: Callable[[], float] = field(default=time.monotonic)

    def router(self) -> APIRouter:
        router = APIRouter(tags=["upstreams"])
        router.add_api_route("/upstreams", self.upstreams, methods=["GET"])
        return router

    async def upstreams(self, admin: Admin) -> UpstreamsOut:
        """Each configured model, in configuration order: its replicas, their state, the
        requests in flight to them, their last health check and their own load."""
        now = self.clock()
        pools = [] if self.pools is None else self.pools.configured()
        return UpstreamsOut(models=[model_upstreams(pool, now) for pool in pools])


def model_upstreams(pool: Pool, now: float) -> ModelUpstreams:
    replicas = list(pool.replicas)  # a snapshot: discovery may change the list meanwhile
    return ModelUpstreams(
        model=pool.model,
        usable=sum(replica.usable for replica in replicas),
        replicas=[replica_out(replica, now) for replica in replicas],
    )


def replica_out(replica: Replica, now: float) -> ReplicaOut:
    load = replica.load
    return ReplicaOut(
        url=shown_url(replica.url),
        source=replica.source,
        state=replica.state,
        usable=replica.usable,
        outstanding=replica.outstanding,
        failures=replica.failures,
        last_check_age_s=None if replica.last_check is None else _age(now, replica.last_check),
        load=None
        if load is None
        else LoadOut(
            waiting=load.waiting,
            running=load.running,
            kv_cache=load.kv_cache,
            age_s=_age(now, load.at),
        ),
        models=sorted(replica.models),
    )


def shown_url(url: str) -> str:
    """URL with any `user:password@` blanked."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{REDACTED}@{host}"))


def _age(now: float, then: float) -> float:
    # Never negative: a reading taken just after `now` was read is zero seconds old.
    return round(max(0.0, now - then), 3)
