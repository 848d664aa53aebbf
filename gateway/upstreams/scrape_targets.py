"""Prometheus' HTTP service discovery of the replicas this gateway knows: the list.

`GET /admin/v1/prometheus/targets` answers in the `http_sd_configs` format: one
target group per replica, whatever found it (static configuration, SkyPilot,
DNS), so Prometheus scrapes vLLM's own `/metrics` on exactly the replicas the
gateway sends requests to, and stops when discovery drops one. Draining
replicas are listed until they are removed: their requests in flight still
run and show in their metrics.

Nothing secret leaves: the target is the replica's host and port only (a
`user:password@` in its URL is never read), and its `authorization` header is
not looked at. vLLM's `--api-key` guards only its `/v1` routes, so Prometheus
needs no replica credential to scrape `/metrics`.
"""

from __future__ import annotations

from typing import TypedDict
from urllib.parse import urlsplit

import orjson

from gateway.upstreams.pool import Pools, Replica

TARGETS_PATH = "/prometheus/targets"
# Where the admin API serves it.
ADMIN_TARGETS_PATH = "/admin/v1" + TARGETS_PATH
DEFAULT_PORTS = {"http": 80, "https": 443}


class TargetGroup(TypedDict):
    """One entry of Prometheus' HTTP SD list."""

    targets: list[str]
    labels: dict[str, str]


def target_groups(pools: Pools | None) -> list[TargetGroup]:
    """Every replica of every configured model, one group each."""
    groups = []
    for pool in [] if pools is None else pools.configured():
        # A snapshot: discovery may change the list meanwhile.
        groups += [target_group(pool.model, replica) for replica in list(pool.replicas)]
    return groups


def target_groups_json(pools: Pools | None) -> bytes:
    """The list as served where `/metrics` is (the admin listener, `metrics.listener:
    admin`): readable by whoever may read `/metrics`, which shows these replicas too."""
    return orjson.dumps(target_groups(pools))


def target_group(model: str, replica: Replica) -> TargetGroup:
    parts = urlsplit(replica.url)
    assert parts.hostname is not None  # base URLs are normalized with a host
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = parts.port or DEFAULT_PORTS[parts.scheme]
    labels = {
        "model": model,
        "source": replica.source,
        "__scheme__": parts.scheme,
        # A replica behind a path prefix (a SkyPilot ingress) serves /metrics under it.
        "__metrics_path__": f"{parts.path.rstrip('/')}/metrics",
    }
    return TargetGroup(targets=[f"{host}:{port}"], labels=labels)
