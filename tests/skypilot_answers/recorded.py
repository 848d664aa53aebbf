"""The recorded answers behind the same `SkyPilotApi` interface as the real client.

endpoints.json and serve_status.json hold one answer per format SkyPilot
gives; each names the SkyPilot code that makes it, and the probe checks them
against SkyPilot's own endpoint classes and decoders.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from gateway.upstreams.endpoints import DiscoveryError
from gateway.upstreams.skypilot import ServiceView, parse_endpoints, parse_service

ANSWERS = Path(__file__).parent
ENDPOINTS: dict[str, Any] = json.loads((ANSWERS / "endpoints.json").read_text())
SERVICES: dict[str, list[dict[str, Any]]] = {
    case: records
    for case, records in json.loads((ANSWERS / "serve_status.json").read_text()).items()
    if not case.startswith("_")
}
# The name asked for the "not_found" answer (an empty list names nothing).
UNKNOWN_SERVICE = "vllm-unknown"


def service_name(records: list[dict[str, Any]]) -> str:
    return records[0]["name"] if records else UNKNOWN_SERVICE


class RecordedSkyPilot:
    """Answers from the recorded answers, read as `SkyPilotClient` reads the SDK's."""

    def __init__(self) -> None:
        # decode_endpoints in SkyPilot's client turns the JSON keys back into ints.
        self._clusters = {
            case["cluster"]: {int(port): url for port, url in case["answer"].items()}
            for case in ENDPOINTS.values()
        }
        self._services = {service_name(records): records for records in SERVICES.values()}

    def cluster_endpoints(self, cluster: str, port: int) -> list[str]:
        if cluster not in self._clusters:
            raise DiscoveryError(f"skypilot cluster {cluster} port {port}: ClusterNotUpError")
        return parse_endpoints(self._clusters[cluster], cluster, port)

    def service(self, name: str) -> ServiceView:
        return parse_service(self._services.get(name, []), name)


class HangingSkyPilot:
    """An API server that does not answer until released; counts the calls that reached it."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()

    def cluster_endpoints(self, cluster: str, port: int) -> list[str]:
        self.calls += 1
        self.release.wait(30)
        return [f"http://{cluster}:{port}"]

    def service(self, name: str) -> ServiceView:
        raise AssertionError("not asked")
