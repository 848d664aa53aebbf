"""Discovered replicas join, drain and survive a SkyPilot outage: pools fed through the
SkyPilot adapter's own interface with answers in the formats the real SDK gives.

Launching a SkyPilot cluster or SkyServe service needs a cloud, which this
machine does not have: the answers are the shapes SkyPilot's SDK returns
(`sky.endpoints`: `{port: "host:port"}`, or `http://host/path` behind a
Kubernetes ingress; `sky.serve.status`: records with `endpoint`, `status` and
`replica_info`), recorded with live simulators' addresses. `tests/test_skypilot.py`
runs the adapter against SkyPilot's real client library and API server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from gateway.settings import UpstreamSettings
from gateway.upstreams.discovery import Discovery, Sourced
from gateway.upstreams.endpoints import DiscoveryError
from gateway.upstreams.monitor import ReplicaMonitor
from gateway.upstreams.pool import PickPolicy, Pool, Pools
from gateway.upstreams.skypilot import (
    ServiceView,
    SkyPilotClusterSource,
    SkyServeSource,
    parse_endpoints,
    parse_service,
)
from tests.servers import Process, run_simulator

pytestmark = pytest.mark.anyio
MODEL = "sim-model"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RecordedSkyPilot:
    """A `SkyPilotApi` answering with recorded SDK answers, parsed by the adapter's own code."""

    def __init__(self) -> None:
        self.endpoints_answer: object = {}
        self.status_answer: object = []
        self.down = False

    def cluster_endpoints(self, cluster: str, port: int) -> list[str]:
        if self.down:
            raise DiscoveryError(f"skypilot cluster {cluster}: ApiServerConnectionError")
        return parse_endpoints(self.endpoints_answer, cluster, port)

    def service(self, name: str) -> ServiceView:
        if self.down:
            raise DiscoveryError(f"skyserve service {name}: ApiServerConnectionError")
        return parse_service(self.status_answer, name)


@pytest.fixture
def sims(tmp_path: Path) -> list[Process]:
    with run_simulator(tmp_path) as one, run_simulator(tmp_path) as two:
        yield [one, two]  # type: ignore[misc]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def discovered(
    session: aiohttp.ClientSession,
    source: Callable[[RecordedSkyPilot], object],
    api: RecordedSkyPilot,
) -> tuple[Pool, Discovery]:
    pool = Pool(MODEL, [], PickPolicy())
    pools = Pools([pool])
    monitor = ReplicaMonitor(pools, lambda: session, UpstreamSettings(), watch_load=False)
    sources = {MODEL: [Sourced(source(api), "Bearer replica-key")]}  # type: ignore[list-item]
    return pool, Discovery(pools, sources, interval=60, joined=monitor.check_all)


async def test_cluster_replicas_join_drain_and_survive_an_outage(
    sims: list[Process], session: aiohttp.ClientSession
) -> None:
    api = RecordedSkyPilot()
    pool, discovery = discovered(session, lambda a: SkyPilotClusterSource(a, "vllm-1", 8000), api)
    first, second = sims
    # Not exposed yet: nothing joins.
    await discovery.refresh()
    assert pool.replicas == []
    # `host:port`, as SkyPilot gives a pod IP or a load balancer: joins after its check.
    api.endpoints_answer = {8000: f"127.0.0.1:{first.port}"}
    await discovery.refresh()
    [replica] = pool.replicas
    assert replica.url == first.url and replica.state == "healthy"
    assert replica.authorization == "Bearer replica-key"
    assert pool.pick() is replica
    # The cluster now answers behind an ingress (`http://host/path/`): the old endpoint drains.
    with replica.lease():
        api.endpoints_answer = {8000: f"http://127.0.0.1:{second.port}/"}
        await discovery.refresh()
        states = {r.url: r.state for r in pool.replicas}
        assert states == {first.url: "draining", second.url: "healthy"}
        assert pool.pick().url == second.url
    # Its last request finished: it is gone at the next refresh.
    await discovery.refresh()
    assert [r.url for r in pool.replicas] == [second.url]
    # The API server is down: the pool keeps what it had.
    api.down = True
    await discovery.refresh()
    assert [r.url for r in pool.replicas] == [second.url]


def serve_status(service: str, lb: str, replicas: list[tuple[int, str, str | None]]) -> object:
    """`sky.get(sky.serve.status(service))`, trimmed to the fields discovery reads."""
    return [
        {
            "name": service,
            "status": "READY",
            "endpoint": lb,
            "load_balancing_policy": "least_load",
            "replica_info": [
                {
                    "replica_id": rid,
                    "name": f"{service}-{rid}",
                    "status": status,
                    "endpoint": endpoint,
                }
                for rid, status, endpoint in replicas
            ],
        }
    ]


async def test_only_ready_serve_replicas_join(
    sims: list[Process], session: aiohttp.ClientSession
) -> None:
    api = RecordedSkyPilot()
    pool, discovery = discovered(session, lambda a: SkyServeSource(a, "vllm-svc", "replicas"), api)
    first, second = sims
    api.status_answer = serve_status(
        "vllm-svc",
        "http://127.0.0.1:1",
        [
            (1, "READY", f"http://127.0.0.1:{first.port}"),
            (2, "STARTING", f"127.0.0.1:{second.port}"),
            (3, "PROVISIONING", None),
        ],
    )
    await discovery.refresh()
    assert [(r.url, r.state) for r in pool.replicas] == [(first.url, "healthy")]
    api.status_answer = serve_status(
        "vllm-svc",
        "http://127.0.0.1:1",
        [
            (1, "READY", f"http://127.0.0.1:{first.port}"),
            (2, "READY", f"127.0.0.1:{second.port}/v1"),
        ],
    )
    await discovery.refresh()
    assert sorted(r.url for r in pool.replicas if r.usable) == sorted([first.url, second.url])


async def test_a_serve_load_balancer_as_one_replica(
    sims: list[Process], session: aiohttp.ClientSession
) -> None:
    api = RecordedSkyPilot()
    pool, discovery = discovered(session, lambda a: SkyServeSource(a, "vllm-svc", "service"), api)
    api.status_answer = serve_status("vllm-svc", f"http://127.0.0.1:{sims[0].port}", [])
    await discovery.refresh()
    assert [(r.url, r.state) for r in pool.replicas] == [(sims[0].url, "healthy")]


async def test_an_endpoint_that_fails_its_check_does_not_join(
    session: aiohttp.ClientSession,
) -> None:
    api = RecordedSkyPilot()
    pool, discovery = discovered(session, lambda a: SkyPilotClusterSource(a, "vllm-1", 8000), api)
    api.endpoints_answer = {8000: "127.0.0.1:1"}  # nothing listens there
    await discovery.refresh()
    [replica] = pool.replicas
    assert replica.state == "joining" and not replica.usable
