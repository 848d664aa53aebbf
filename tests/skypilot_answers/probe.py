"""Ask the real SkyPilot SDK through the gateway's adapter; write what happened as JSON.

Run by the tests in .venv-sky (the gateway with its `skypilot` extra), with a
scratch HOME: SkyPilot reads and writes ~/.sky, fixes some paths when `sky` is
imported, and warns while importing (the test session turns warnings into
errors).

    python -m tests.skypilot_answers.probe MODE OUT [CLUSTER]

    live OUT               start the local API server through the SDK's own first-use
                           start (SKYPILOT_API_SERVER_LOCAL_PORT), ask it; it keeps running
    requests OUT CLUSTER   the requests the running API server got for CLUSTER
    stop OUT               stop it with sky.api_stop()
    unreachable OUT        SKYPILOT_API_SERVER_ENDPOINT points at a closed port
    shapes OUT             the recorded answers through SkyPilot's own
                           endpoint classes and decoders
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from gateway.upstreams.endpoints import DiscoveryError
from gateway.upstreams.skypilot import (
    SkyPilotClient,
    SkyPilotClusterSource,
    parse_endpoints,
    parse_service,
)
from tests.skypilot_answers.recorded import ENDPOINTS, SERVICES, service_name

MISSING_CLUSTER = "vgw-no-such-cluster"
MISSING_SERVICE = "vgw-no-such-service"


def failure(call: Any) -> dict[str, Any]:
    """What a call raised: our error's message and the SkyPilot exception behind it."""
    started = time.monotonic()
    try:
        answer = call()
    except DiscoveryError as exc:
        cause = exc.__cause__
        return {
            "error": str(exc),
            "cause": None if cause is None else f"{type(cause).__module__}.{type(cause).__name__}",
            "seconds": round(time.monotonic() - started, 2),
        }
    return {"answer": repr(answer), "seconds": round(time.monotonic() - started, 2)}


def ask_both(client: SkyPilotClient) -> dict[str, Any]:
    source = SkyPilotClusterSource(client, MISSING_CLUSTER, 8000, timeout=120)
    return {
        "cluster": failure(lambda: client.cluster_endpoints(MISSING_CLUSTER, 8000)),
        "service": failure(lambda: client.service(MISSING_SERVICE)),
        "source": failure(lambda: asyncio.run(source.endpoints())),
    }


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def live() -> dict[str, Any]:
    port = int(os.environ["SKYPILOT_API_SERVER_LOCAL_PORT"])
    # The server the SDK starts copies this environment; it runs no gateway code to measure.
    os.environ.pop("COVERAGE_PROCESS_CONFIG", None)
    result: dict[str, Any] = {"server_was_up_before": port_open(port)}
    started = time.monotonic()
    client = SkyPilotClient()
    result["import_seconds"] = round(time.monotonic() - started, 2)
    result |= ask_both(client)
    result["server_was_up"] = port_open(port)
    return result


def server_requests(cluster: str) -> dict[str, Any]:
    import sky  # noqa: PLC0415 (only tests look at the server's requests)

    asked = sky.api_status(all_status=True, cluster_name=cluster)
    return {"requests": [{"name": request.name, "status": request.status} for request in asked]}


def stop() -> dict[str, Any]:
    import sky  # noqa: PLC0415 (the tests stop the server; the gateway never does)

    port = int(os.environ["SKYPILOT_API_SERVER_LOCAL_PORT"])
    sky.api_stop()
    return {"server_up_after_stop": port_open(port)}


def unreachable() -> dict[str, Any]:
    return ask_both(SkyPilotClient())


def shapes() -> dict[str, Any]:
    """The recorded strings as SkyPilot's classes build them; read as the SDK decodes them."""
    from sky.provision import common  # noqa: PLC0415
    from sky.server import constants  # noqa: PLC0415
    from sky.server.requests import request_names  # noqa: PLC0415
    from sky.server.requests.serializers import decoders  # noqa: PLC0415

    def decoder(name: request_names.RequestName) -> Any:
        # What sky.get applies: the decoder registered for the request's name ("sky.endpoints").
        found = decoders.get_decoder(constants.REQUEST_NAME_PREFIX + name.value)
        assert found is not decoders.default_decode_handler, name
        return found

    built, parsed = {}, {}
    for case, recorded in ENDPOINTS.items():
        made_by = recorded["made_by"]
        if made_by is not None:
            built[case] = getattr(common, made_by["class"])(**made_by["fields"]).url()
        decode = decoder(request_names.RequestName.CLUSTER_ENDPOINTS)
        answer = decode(copy.deepcopy(recorded["answer"]))
        parsed[case] = parse_endpoints(answer, recorded["cluster"], recorded["port"])
    services = {}
    for case, records in SERVICES.items():
        decoded = decoder(request_names.RequestName.SERVE_STATUS)(copy.deepcopy(records))
        statuses = [record["status"] for record in decoded]
        statuses += [replica["status"] for record in decoded for replica in record["replica_info"]]
        services[case] = {
            "status_types": sorted({type(status).__name__ for status in statuses}),
            "view": dataclasses.asdict(parse_service(decoded, service_name(records))),
        }
    return {"built": built, "endpoints": parsed, "services": services}


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    answers = {
        "live": live,
        "requests": lambda: server_requests(sys.argv[3]),
        "stop": stop,
        "unreachable": unreachable,
        "shapes": shapes,
    }
    out.write_text(json.dumps(answers[mode](), indent=2))


if __name__ == "__main__":
    main()
