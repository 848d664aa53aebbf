"""The pools of a gateway process, built from its settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.settings import (
    DiscoverySettings,
    DnsSettings,
    ModelSettings,
    Settings,
    split_nameserver,
)
from gateway.upstreams.discovery import Sourced
from gateway.upstreams.endpoints import EndpointSource
from gateway.upstreams.pool import PickPolicy, Pool, Pools, Replica

if TYPE_CHECKING:
    from gateway.upstreams.dns_source import DnsSource
    from gateway.upstreams.skypilot import SkyPilotApi


def _bearer(secret: str | None) -> str | None:
    return None if secret is None else f"Bearer {secret}"


def discovered_authorization(model: ModelSettings) -> str | None:
    """The header for the model's discovered replicas: its `api_key`."""
    return _bearer(None if model.api_key is None else model.api_key.get_secret_value())


def pools_from_settings(settings: Settings) -> Pools:
    load = settings.upstreams.load
    policy = PickPolicy(
        load_aware=load.picking == "load_aware",
        # Three missed readings and the replica's load is unknown again.
        load_max_age=3 * load.scrape_interval,
        max_load=settings.upstreams.affinity.max_load,
    )
    pools = []
    for model in settings.models:
        replicas = []
        for replica in model.replicas:
            key = replica.api_key or model.api_key
            secret = None if key is None else key.get_secret_value()
            replicas.append(Replica(replica.url, _bearer(secret)))
        pools.append(Pool(model.name, replicas, policy))
    return Pools(pools)


def discovery_sources(settings: Settings) -> dict[str, list[Sourced]]:
    """Each model's discovery sources. SkyPilot's SDK and the DNS resolver are imported
    only when one of theirs is configured (they cost every process memory)."""
    sources: dict[str, list[Sourced]] = {}
    client: SkyPilotApi | None = None
    for model in settings.models:
        if not model.discovery:
            continue
        authorization = discovered_authorization(model)
        entries = []
        for given in model.discovery:
            if given.dns is not None:
                entries.append(Sourced(dns_source(given.dns), authorization, given.dns.interval))
                continue
            if client is None:
                from gateway.upstreams.skypilot import SkyPilotClient  # noqa: PLC0415 (optional extra)

                client = SkyPilotClient()
            entries.append(Sourced(_skypilot_source(client, given), authorization))
        sources[model.name] = entries
    return sources


def dns_source(given: DnsSettings) -> DnsSource:
    from gateway.upstreams.dns_source import DnsSource  # noqa: PLC0415 (imported when used)

    return DnsSource(
        given.name,
        port=given.port,
        scheme=given.scheme,
        srv=given.srv,
        timeout=given.timeout,
        nameservers=[split_nameserver(server) for server in given.nameservers],
    )


def _skypilot_source(client: SkyPilotApi, given: DiscoverySettings) -> EndpointSource:
    from gateway.upstreams.skypilot import (  # noqa: PLC0415 (optional extra)
        SkyPilotClusterSource,
        SkyServeSource,
    )

    if given.skypilot_cluster is not None:
        cluster = given.skypilot_cluster
        return SkyPilotClusterSource(client, cluster.cluster, cluster.port)
    assert given.skyserve is not None  # checked by the settings
    return SkyServeSource(client, given.skyserve.service, given.skyserve.mode)
