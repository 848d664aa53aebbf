"""The models, their replicas, how they are found, checked and loaded."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    field_validator,
    model_validator,
)

from gateway.settings.base import Secret, _Strict, normalize_upstream_url

# An HTTP header name (RFC 9110's token).
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


class ReplicaSettings(_Strict):
    url: Annotated[str, AfterValidator(normalize_upstream_url)]
    api_key: Secret = None


class SkyPilotClusterSettings(_Strict):
    """Replicas on a SkyPilot cluster: the endpoint of `port` on `cluster`."""

    cluster: str = Field(min_length=1)
    port: int = Field(default=8000, ge=1, le=65535)


class SkyServeSettings(_Strict):
    """A SkyServe service: each READY replica (`replicas`: the gateway balances), or the
    service's own load balancer as one replica (`service`)."""

    service: str = Field(min_length=1)
    mode: Literal["replicas", "service"] = "replicas"


def split_nameserver(value: str) -> tuple[str, int]:
    """`ip`, `ip:port` or `[ipv6]:port` -> (ip, port); port 53 when none is given."""
    text = value.strip()
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdecimal():
                raise ValueError(f"nameserver {value!r}: expected [ipv6]:port")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, given = text.partition(":")
        if not given.isdecimal():
            raise ValueError(f"nameserver {value!r}: the port is not a number")
        port = int(given)
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(f"nameserver {value!r}: give an IP address, not a name") from exc
    if not 1 <= port <= 65535:
        raise ValueError(f"nameserver {value!r}: port out of range")
    return host, port


def _nameserver(value: str) -> str:
    split_nameserver(value)
    return value.strip()


class DnsSettings(_Strict):
    """Replicas behind a DNS name, such as a Kubernetes headless Service: every address
    of `name` (A and AAAA) on `port`, or with `srv`, every target and port of its SRV
    records. `nameservers` (`ip[:port]`) replace the system resolver (/etc/resolv.conf)."""

    name: str = Field(min_length=1, max_length=253)
    port: int | None = Field(default=None, ge=1, le=65535)
    scheme: Literal["http", "https"] = "http"
    srv: bool = False
    # None: upstreams.discovery_interval.
    interval: float | None = Field(default=None, gt=0, le=86400)
    timeout: float = Field(default=5.0, gt=0, le=60)
    nameservers: list[Annotated[str, AfterValidator(_nameserver)]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _port_unless_srv(self) -> DnsSettings:
        if self.srv and self.port is not None:
            raise ValueError("srv records carry the port: give no port with srv: true")
        if not self.srv and self.port is None:
            raise ValueError("give the replicas' port (or srv: true)")
        return self


class DiscoverySettings(_Strict):
    """One source of replicas; found endpoints join after their first healthy check."""

    skypilot_cluster: SkyPilotClusterSettings | None = None
    skyserve: SkyServeSettings | None = None
    dns: DnsSettings | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> DiscoverySettings:
        given = [self.skypilot_cluster, self.skyserve, self.dns]
        if sum(source is not None for source in given) != 1:
            raise ValueError("give exactly one of skypilot_cluster, skyserve or dns")
        return self


ApiFamily = Literal[
    "chat",
    "completions",
    "embeddings",
    "messages",
    "responses",
    "rerank",
    "score",
    "embed_v2",
    "transcriptions",
    "translations",
]
DEFAULT_APIS: tuple[ApiFamily, ...] = ("chat", "completions", "embeddings", "messages", "responses")


class ModelSettings(_Strict):
    name: str = Field(min_length=1)
    replicas: list[ReplicaSettings] = Field(default_factory=list)
    discovery: list[DiscoverySettings] = Field(default_factory=list)
    # The vLLM --api-key of discovered replicas (static ones may carry their own).
    api_key: Secret = None
    # The API families forwarded for this model (gateway.proxy.apis): pooling and audio
    # routes (rerank, score, embed_v2, transcriptions, translations) only when named here.
    apis: list[ApiFamily] = Field(default_factory=lambda: list(DEFAULT_APIS), min_length=1)


class HealthSettings(_Strict):
    """Active `/health` checks, and passive ejection on failed requests."""

    interval: float = Field(default=5.0, gt=0, le=3600)
    timeout: float = Field(default=3.0, gt=0, le=60)
    healthy_threshold: int = Field(default=1, ge=1, le=100)
    unhealthy_threshold: int = Field(default=3, ge=1, le=100)
    # Consecutive connection failures or 5xx answers that take a replica out until a
    # health check passes.
    eject_after: int = Field(default=3, ge=1, le=1000)


class LoadSettings(_Strict):
    """Each replica's own load, read from its `/metrics` (vLLM's gauges)."""

    # least_outstanding: fewest requests in flight from this gateway; load_aware: also the
    # replica's waiting queue and KV-cache use, so other clients' load counts too.
    picking: Literal["least_outstanding", "load_aware"] = "least_outstanding"
    scrape_interval: float = Field(default=2.0, gt=0, le=3600)
    # When every replica of a model has more than this many requests waiting, refuse at
    # once with `shed_status` instead of queueing. None: never.
    shed_waiting_above: int | None = Field(default=None, ge=0)
    shed_status: Literal[429, 503] = 503
    shed_retry_after: int = Field(default=2, ge=1, le=3600)


class AffinitySettings(_Strict):
    """The requests of one conversation to one replica, where vLLM's prefix cache
    already holds its opening (gateway.proxy.affinity)."""

    # none: each request to the least busy replica; conversation: each conversation to
    # the replica its key ranks first, while that replica is not overloaded.
    by: Literal["none", "conversation"] = "none"
    # A request header that names the conversation (a session id): when a request
    # carries it, its value is the key instead of the conversation's opening.
    header: str | None = Field(default=None, min_length=1, max_length=128)
    # Characters of a completions prompt (or of the header's value) the key is made of;
    # a chat's opening is taken whole.
    prefix_chars: int = Field(default=4096, ge=16, le=1_048_576)
    # A replica keeps its conversations while its requests in flight stay below this
    # many times the pool's mean; past that, the next replica in the ranking serves.
    max_load: float = Field(default=1.5, ge=1.0, le=100.0)

    @field_validator("header")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        if value is not None and not _TOKEN.fullmatch(value):
            raise ValueError("must be an HTTP header name (letters, digits and -!#$%&'*+.^_`|~)")
        return None if value is None else value.lower()


class UpstreamSettings(_Strict):
    health: HealthSettings = HealthSettings()
    load: LoadSettings = LoadSettings()
    affinity: AffinitySettings = AffinitySettings()
    # Another replica is tried only when the request provably never reached an engine
    # (a connection that failed, or vLLM's own 503 for a full queue) and nothing was sent.
    retries: int = Field(default=2, ge=0, le=10)
    discovery_interval: float = Field(default=30.0, gt=0, le=86400)
