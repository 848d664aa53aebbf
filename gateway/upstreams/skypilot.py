"""Replicas discovered from SkyPilot: the one module that imports the SkyPilot SDK.

The SDK is an optional extra (`pip install 'vllm-gateway[skypilot]'`) of a few
hundred megabytes that takes about two seconds to import, so it is imported
when a `SkyPilotClient` is built, and that happens only when a SkyPilot source
is configured. Every SDK call returns a request id that `sky.get` resolves
against SkyPilot's API server: a remote one (`SKYPILOT_API_SERVER_ENDPOINT`,
`sky api login`) or a local one the SDK starts on first use. Both block, so
the sources run them in a thread of their own (`endpoints.BlockingCall`).

The SDK re-raises on the client what the API server raised; mapped here to
`DiscoveryError`, which names the cluster or service:

    sky.exceptions.ClusterNotUpError          cluster unknown or not UP; no SkyServe controller
    sky.exceptions.ApiServerConnectionError   API server unreachable (a RuntimeError)
    RuntimeError                              other server failures, e.g. "Failed to refresh
                                              services status due to network error."
    ValueError                                ports not supported on that cloud, bad port
    OSError                                   connection dropped mid-call (requests' errors)
    + NetworkError, RequestCancelled, CloudError and the identity/permission errors
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.upstreams.endpoints import BlockingCall, DiscoveryError, normalize_endpoint

ServeMode = Literal["replicas", "service"]
SERVE_MODES: tuple[ServeMode, ...] = ("replicas", "service")
READY = "READY"
# The first call may start a local API server: 15-20 s on a 2-core machine.
DEFAULT_TIMEOUT_S = 60.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class ReplicaView:
    replica_id: int
    status: str
    endpoint: str | None


@dataclass(frozen=True)
class ServiceView:
    """One SkyServe service as its controller sees it.

    `status` is SkyServe's service status (`READY`, `REPLICA_INIT`,
    `NO_REPLICA`, ...), or None when the controller does not know the service.
    `endpoint` is the service's load balancer. Only READY replicas are usable:
    SkyServe marks a replica READY once its readiness probe passes; a STARTING,
    NOT_READY or PROVISIONING replica may already have an endpoint that answers
    nothing, or answers errors.
    """

    name: str
    status: str | None
    endpoint: str | None
    replicas: tuple[ReplicaView, ...] = ()

    def ready_endpoints(self) -> list[str]:
        return [
            replica.endpoint
            for replica in self.replicas
            if replica.status == READY and replica.endpoint is not None
        ]


class SkyPilotApi(Protocol):
    """The two questions discovery asks SkyPilot. Both block and raise `DiscoveryError`.

    `SkyPilotClient` asks the real SDK; the tests answer from recorded answers.
    """

    def cluster_endpoints(self, cluster: str, port: int) -> list[str]: ...

    def service(self, name: str) -> ServiceView: ...


class SkyPilotClient:
    """`SkyPilotApi` over the SkyPilot SDK.

    Building one imports the SDK (about 2 s and 130 MB): do it only when a
    SkyPilot source is configured, and off the event loop.
    """

    def __init__(self) -> None:
        try:
            self._sky = importlib.import_module("sky")
            exceptions = importlib.import_module("sky.exceptions")
        except ImportError as exc:
            raise DiscoveryError(
                "SkyPilot discovery needs the SkyPilot SDK: pip install 'vllm-gateway[skypilot]'"
            ) from exc
        self._errors: tuple[type[BaseException], ...] = (
            exceptions.ClusterNotUpError,
            exceptions.NetworkError,
            exceptions.RequestCancelled,
            exceptions.CloudError,
            exceptions.CloudUserIdentityError,
            exceptions.ClusterOwnerIdentityMismatchError,
            exceptions.PermissionDeniedError,
            exceptions.ServerTemporarilyUnavailableError,
            RuntimeError,
            ValueError,
            OSError,
        )

    def cluster_endpoints(self, cluster: str, port: int) -> list[str]:
        """The cluster's endpoint for `port`; empty while SkyPilot has not exposed it yet."""
        with self._mapped(_cluster_name(cluster, port)):
            answer: object = self._sky.get(self._sky.endpoints(cluster, port))
        return parse_endpoints(answer, cluster, port)

    def service(self, name: str) -> ServiceView:
        with self._mapped(_service_name(name)):
            answer: object = self._sky.get(self._sky.serve.status(name))
        return parse_service(answer, name)

    @contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            reason = " ".join(_ANSI.sub("", str(exc)).split())
            raise DiscoveryError(f"{what}: {type(exc).__name__}: {reason}") from exc


def parse_endpoints(answer: object, cluster: str, port: int) -> list[str]:
    """Read `sky.get(sky.endpoints(cluster, port))`: `{port: endpoint}`, or `{}` until exposed."""
    what = _cluster_name(cluster, port)
    if not isinstance(answer, Mapping):
        raise DiscoveryError(f"{what}: unexpected answer {answer!r}")
    endpoint = answer.get(port)
    return [] if endpoint is None else [_endpoint(endpoint, what)]


def parse_service(answer: object, name: str) -> ServiceView:
    """Read `sky.get(sky.serve.status(name))`: a list of service records.

    A service the controller does not know is left out of the list; it becomes
    a view with no status, no endpoint and no replica.
    """
    what = _service_name(name)
    if not isinstance(answer, list):
        raise DiscoveryError(f"{what}: unexpected answer {answer!r}")
    for record in answer:
        if isinstance(record, Mapping) and record.get("name") == name:
            replicas = record.get("replica_info", [])
            if not isinstance(replicas, list):
                raise DiscoveryError(f"{what}: unexpected replica_info {replicas!r}")
            return ServiceView(
                name=name,
                status=_status(record.get("status"), what),
                endpoint=_optional_endpoint(record.get("endpoint"), what),
                replicas=tuple(_replica(replica, what) for replica in replicas),
            )
    return ServiceView(name=name, status=None, endpoint=None)


def _replica(record: object, what: str) -> ReplicaView:
    if not isinstance(record, Mapping):
        raise DiscoveryError(f"{what}: unexpected replica {record!r}")
    replica_id = record.get("replica_id")
    if not isinstance(replica_id, int):
        raise DiscoveryError(f"{what}: replica without an id: {record!r}")
    what = f"{what} replica {replica_id}"
    return ReplicaView(
        replica_id=replica_id,
        status=_status(record.get("status"), what),
        endpoint=_optional_endpoint(record.get("endpoint"), what),
    )


def _status(value: object, what: str) -> str:
    # The SDK decodes statuses into enums (sky.serve.ReplicaStatus); recorded answers hold names.
    name = getattr(value, "value", value)
    if not isinstance(name, str):
        raise DiscoveryError(f"{what}: unexpected status {value!r}")
    return name


def _optional_endpoint(value: object, what: str) -> str | None:
    return None if value is None else _endpoint(value, what)


def _endpoint(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise DiscoveryError(f"{what}: unexpected endpoint {value!r}")
    try:
        return normalize_endpoint(value)
    except ValueError as exc:
        raise DiscoveryError(f"{what}: SkyPilot answered an {exc}") from exc


def _cluster_name(cluster: str, port: int) -> str:
    return f"skypilot cluster {cluster} port {port}"


def _service_name(service: str) -> str:
    return f"skyserve service {service}"


class SkyPilotClusterSource:
    """The vLLM server on one SkyPilot cluster: `sky status --endpoint PORT CLUSTER`.

    A cluster is one replica, even with several nodes: vLLM serves its API
    from the head node, and SkyPilot gives the head's endpoint.
    """

    def __init__(
        self, client: SkyPilotApi, cluster: str, port: int, *, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.name = _cluster_name(cluster, port)
        self._ask = BlockingCall(
            functools.partial(client.cluster_endpoints, cluster, port), self.name, timeout
        )

    async def endpoints(self) -> list[str]:
        return await self._ask()


class SkyServeSource:
    """A SkyServe service, in one of two modes.

    `replicas`: each READY replica's own endpoint; the gateway balances and
    health-checks them, and skips SkyServe's load balancer (one hop less, and
    its 120 s default stream timeout). `service`: the load balancer as a single
    replica, whatever the service's status: with `min_replicas: 0` it is the
    load balancer's traffic that wakes the service up.
    """

    def __init__(
        self,
        client: SkyPilotApi,
        service: str,
        mode: ServeMode = "replicas",
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if mode not in SERVE_MODES:
            raise ValueError(f"SkyServe mode must be one of {SERVE_MODES}, not {mode!r}")
        self.name = f"{_service_name(service)} ({mode})"
        self._mode = mode
        self._ask = BlockingCall(functools.partial(client.service, service), self.name, timeout)

    async def endpoints(self) -> list[str]:
        view = await self._ask()
        if self._mode == "service":
            return [] if view.endpoint is None else [view.endpoint]
        return view.ready_endpoints()
