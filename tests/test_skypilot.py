"""SkyPilot discovery: the adapter against the real SDK, and the sources on recorded answers.

What runs here:

- SkyPilot's real SDK and its local API server, which the SDK starts itself
  on first use (offline, in a scratch HOME, on a free port; shared with
  test_skypilot_gateway.py and stopped with `sky.api_stop()` at the end of the
  session): an unknown cluster, SkyServe status without a serve controller, an
  unreachable API server. SkyPilot pins uvicorn<0.36 and click<8.2, so it
  lives in .venv-sky, the gateway installed with its `skypilot` extra
  (scripts/install-skypilot-venv.sh): a probe process of that venv
  (skypilot_answers/probe.py) asks, and this process never imports `sky`.
- The recorded answers (skypilot_answers/*.json, one per format SkyPilot
  gives, each naming the SkyPilot code that makes it), checked against
  SkyPilot's own endpoint classes and decoders, then fed to the sources.

What cannot run here: a cluster or a SkyServe service that answers with
replicas. Launching one needs a cloud or Kubernetes account, so those answers
are recorded, not live. SkyServe status also depends on the network: the API
server first checks it can reach the internet, and offline (this machine)
fails with RuntimeError("Failed to refresh services status due to network
error."); online and without a controller it raises ClusterNotUpError.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import threading
import time
from typing import Any

import pytest

from gateway.upstreams.endpoints import DiscoveryError, StaticSource, normalize_endpoint
from gateway.upstreams.skypilot import (
    ServeMode,
    ServiceView,
    SkyPilotClient,
    SkyPilotClusterSource,
    SkyServeSource,
    parse_endpoints,
    parse_service,
)
from tests.servers import free_port
from tests.skypilot_answers import harness
from tests.skypilot_answers.harness import LocalApiServer
from tests.skypilot_answers.recorded import (
    ENDPOINTS,
    SERVICES,
    HangingSkyPilot,
    RecordedSkyPilot,
    service_name,
)

pytest_plugins = ["tests.skypilot_answers.api_server"]
# The first test to use a live fixture waits for the API server to start.
LIVE_TIMEOUT_S = 480


def cluster_urls(cluster: str, port: int = 8000) -> list[str]:
    return asyncio.run(SkyPilotClusterSource(RecordedSkyPilot(), cluster, port).endpoints())


def service_urls(service: str, mode: ServeMode) -> list[str]:
    return asyncio.run(SkyServeSource(RecordedSkyPilot(), service, mode).endpoints())


# The recorded answers, through the sources.


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("aws", ["http://3.91.20.7:8000"]),
        ("k8s_loadbalancer", ["http://34.118.2.10:8000"]),
        ("k8s_ingress", ["http://34.118.2.9/skypilot/default/vllm-3-2ea4/8000"]),
        ("k8s_ingress_nodeport", ["http://10.0.0.5:30080/skypilot/default/vllm-4-2ea4/8000"]),
        ("https", ["https://34.118.2.9/skypilot/default/vllm-5-2ea4/8000"]),
        ("not_exposed_yet", []),
    ],
)
def test_a_cluster_answer_in_each_format_becomes_a_base_url(case: str, expected: list[str]) -> None:
    assert cluster_urls(ENDPOINTS[case]["cluster"]) == expected


def test_a_cluster_without_the_asked_port_has_no_replica() -> None:
    assert cluster_urls("vllm-1", port=8001) == []


def test_replicas_mode_routes_to_ready_replicas_with_an_endpoint_only() -> None:
    # STARTING, PROVISIONING, NOT_READY and FAILED_PROBING are left out; so is replica 6,
    # READY but without an endpoint (its cluster is not UP at this instant).
    assert service_urls("vllm-svc", "replicas") == [
        "http://3.91.20.7:8000",
        "http://34.118.2.9/skypilot/default/vllm-svc-2-2ea4/8000",
    ]


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ("vllm-svc", ["http://35.202.1.3:30001"]),
        ("vllm-tls", ["https://35.202.1.4:30002"]),
        # Scaled to zero: the load balancer's traffic is what brings a replica back.
        ("vllm-idle", ["http://34.118.2.20/skypilot/default/sky-serve-controller-2ea4/30003"]),
        ("vllm-new", []),
        ("vllm-unknown", []),
    ],
)
def test_service_mode_is_the_load_balancer(service: str, expected: list[str]) -> None:
    assert service_urls(service, "service") == expected


@pytest.mark.parametrize("service", ["vllm-idle", "vllm-new", "vllm-unknown"])
def test_a_service_without_ready_replicas_has_none_in_replicas_mode(service: str) -> None:
    assert service_urls(service, "replicas") == []


def test_a_service_the_controller_does_not_know_has_no_status() -> None:
    assert RecordedSkyPilot().service("vllm-unknown") == ServiceView("vllm-unknown", None, None)


def test_sources_name_what_they_ask() -> None:
    client = RecordedSkyPilot()
    assert SkyPilotClusterSource(client, "vllm-1", 8000).name == "skypilot cluster vllm-1 port 8000"
    assert SkyServeSource(client, "svc", "service").name == "skyserve service svc (service)"
    with pytest.raises(ValueError, match="mode"):
        SkyServeSource(client, "svc", "balanced")  # type: ignore[arg-type]


def test_an_unknown_cluster_is_a_discovery_error_through_the_source() -> None:
    with pytest.raises(DiscoveryError, match="vllm-9"):
        cluster_urls("vllm-9")


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (None, "unexpected answer"),
        ([("8000", "1.2.3.4:8000")], "unexpected answer"),
        ({8000: 8000}, "unexpected endpoint"),
        ({8000: "ftp://1.2.3.4:8000"}, "ftp"),
        ({8000: "1.2.3.4:80a"}, "1.2.3.4:80a"),
    ],
)
def test_a_cluster_answer_we_cannot_read_is_a_discovery_error(answer: object, match: str) -> None:
    with pytest.raises(DiscoveryError, match=match) as caught:
        parse_endpoints(answer, "vllm-1", 8000)
    assert "vllm-1" in str(caught.value)


def _with_replica(**fields: object) -> list[dict[str, Any]]:
    record = json.loads(json.dumps(SERVICES["tls"][0]))
    record["replica_info"][0].update(fields)
    return [record]


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        ({"name": "vllm-tls"}, "unexpected answer"),
        ([{**SERVICES["tls"][0], "replica_info": {}}], "unexpected replica_info"),
        ([{**SERVICES["tls"][0], "replica_info": ["r1"]}], "unexpected replica"),
        (_with_replica(replica_id=None), "without an id"),
        (_with_replica(status=3), "replica 1: unexpected status"),
        (_with_replica(endpoint="http://"), "replica 1: SkyPilot answered"),
    ],
)
def test_a_service_answer_we_cannot_read_is_a_discovery_error(answer: object, match: str) -> None:
    with pytest.raises(DiscoveryError, match=match) as caught:
        parse_service(answer, "vllm-tls")
    assert "skyserve service vllm-tls" in str(caught.value)


# Endpoint normalization and static sources.


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1.2.3.4:8000", "http://1.2.3.4:8000"),
        ("localhost:30001", "http://localhost:30001"),
        ("http://34.1.2.3/skypilot/ns/c-2ea4/8000/", "http://34.1.2.3/skypilot/ns/c-2ea4/8000"),
        ("https://gw.example.com/v1", "https://gw.example.com"),
        ("http://[::1]:8000", "http://[::1]:8000"),
    ],
)
def test_normalize_endpoint(raw: str, expected: str) -> None:
    assert normalize_endpoint(raw) == expected


@pytest.mark.parametrize(
    "raw", ["", "ftp://1.2.3.4:21", "http://", "1.2.3.4:abc", "1.2.3.4:99999", "h:1?x=1", "a b:80"]
)
def test_normalize_endpoint_refuses_garbage_naming_it(raw: str) -> None:
    with pytest.raises(ValueError, match="is not a usable base URL") as caught:
        normalize_endpoint(raw)
    assert repr(raw) in str(caught.value)


def test_a_static_source_normalizes_once_and_refuses_garbage_at_once() -> None:
    source = StaticSource(["1.2.3.4:8000", "https://vllm.example/v1/"])
    assert asyncio.run(source.endpoints()) == ["http://1.2.3.4:8000", "https://vllm.example"]
    assert source.name == "static configuration"
    with pytest.raises(ValueError, match="ftp"):
        StaticSource(["ftp://x"])


def test_a_hung_api_server_costs_one_thread_not_one_per_poll() -> None:
    hanging = HangingSkyPilot()
    source = SkyPilotClusterSource(hanging, "vllm-1", 8000, timeout=0.2)

    async def poll_three_times() -> list[str]:
        for _ in range(2):
            with pytest.raises(DiscoveryError, match=r"vllm-1 port 8000: no answer within 0.2 s"):
                await source.endpoints()
        hanging.release.set()
        return await source.endpoints()

    assert asyncio.run(poll_three_times()) == ["http://vllm-1:8000"]
    assert hanging.calls == 1


def test_a_hung_call_does_not_hold_up_the_exit_of_the_loop() -> None:
    hanging = HangingSkyPilot()
    source = SkyPilotClusterSource(hanging, "vllm-1", 8000, timeout=0.1)

    async def poll() -> None:
        with pytest.raises(DiscoveryError, match="no answer"):
            await source.endpoints()

    started = time.monotonic()
    asyncio.run(poll())
    assert time.monotonic() - started < 5
    # Answering after the loop closed: the thread ends quietly (an error would fail the test).
    hanging.release.set()
    for thread in threading.enumerate():
        if thread.name == "discovery: skypilot cluster vllm-1 port 8000":
            thread.join(5)
            assert not thread.is_alive()


def test_without_the_sdk_the_client_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import sky` fail, installed or not.
    monkeypatch.setitem(sys.modules, "sky", None)
    with pytest.raises(DiscoveryError, match=r"pip install 'vllm-gateway\[skypilot\]'"):
        SkyPilotClient()


# The real SDK, in a probe process.


@pytest.fixture(scope="module")
def live(sky_api_server: LocalApiServer) -> dict[str, Any]:
    return sky_api_server.started


@pytest.fixture(scope="module")
def unreachable(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # A port nothing listens on, and not the local server's: the SDK must not start one.
    endpoint = f"http://127.0.0.1:{free_port()}"
    tmp = tmp_path_factory.mktemp("skypilot-unreachable")
    env = harness.sky_env(tmp / "home", SKYPILOT_API_SERVER_ENDPOINT=endpoint)
    return harness.probe("unreachable", tmp, env) | {"endpoint": endpoint}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("skypilot-shapes")
    return harness.probe("shapes", tmp, harness.sky_env(tmp / "home"))


@pytest.mark.timeout(LIVE_TIMEOUT_S)
def test_an_unknown_cluster_is_cluster_not_up_mapped_to_a_discovery_error(
    live: dict[str, Any],
) -> None:
    cluster = live["cluster"]
    assert cluster["cause"] == "sky.exceptions.ClusterNotUpError"
    assert cluster["error"] == (
        "skypilot cluster vgw-no-such-cluster port 8000: "
        "ClusterNotUpError: Cluster 'vgw-no-such-cluster' not found."
    )


@pytest.mark.timeout(LIVE_TIMEOUT_S)
def test_skyserve_status_without_a_controller_is_an_error_not_an_empty_list(
    live: dict[str, Any],
) -> None:
    service = live["service"]
    assert "answer" not in service, service
    assert service["error"].startswith("skyserve service vgw-no-such-service: ")
    offline = "RuntimeError: Failed to refresh services status due to network error."
    if service["cause"] == "builtins.RuntimeError":
        assert service["error"].endswith(offline)
    else:
        assert service["cause"] == "sky.exceptions.ClusterNotUpError"


@pytest.mark.timeout(LIVE_TIMEOUT_S)
def test_the_source_asks_the_sdk_from_a_worker_thread(live: dict[str, Any]) -> None:
    assert live["source"]["error"] == live["cluster"]["error"]
    assert live["source"]["cause"] == "sky.exceptions.ClusterNotUpError"


@pytest.mark.timeout(LIVE_TIMEOUT_S)
def test_the_sdk_starts_the_local_api_server_in_its_own_venv(
    sky_api_server: LocalApiServer,
) -> None:
    # Stopping it is checked when the session ends (see api_server.py): a server left
    # running after sky.api_stop() fails the session there.
    assert sky_api_server.started["server_was_up_before"] is False
    assert sky_api_server.started["server_was_up"] is True
    [command] = sky_api_server.servers.values()
    assert command[:3] == [str(harness.SKY_PYTHON), "-m", "sky.server.server"]
    assert f"--port={sky_api_server.port}" in command


@pytest.mark.timeout(LIVE_TIMEOUT_S)
def test_an_unreachable_api_server_is_a_discovery_error(unreachable: dict[str, Any]) -> None:
    for call, name in [("cluster", "vgw-no-such-cluster"), ("service", "vgw-no-such-service")]:
        answer = unreachable[call]
        assert answer["cause"] == "sky.exceptions.ApiServerConnectionError"
        assert name in answer["error"]
        assert (
            f"Could not connect to SkyPilot API server at {unreachable['endpoint']}"
            in (answer["error"])
        )


@pytest.mark.timeout(LIVE_TIMEOUT_S)
def test_the_recorded_strings_are_what_skypilot_builds(shapes: dict[str, Any]) -> None:
    for case, recorded in ENDPOINTS.items():
        if recorded["made_by"] is not None:
            assert shapes["built"][case] == recorded["answer"][str(recorded["port"])], case
    assert sorted(shapes["built"]) == sorted(set(ENDPOINTS) - {"not_exposed_yet"})


@pytest.mark.timeout(LIVE_TIMEOUT_S)
def test_skypilot_decoded_answers_read_as_the_recorded_ones(shapes: dict[str, Any]) -> None:
    client = RecordedSkyPilot()
    for case, recorded in ENDPOINTS.items():
        expected = client.cluster_endpoints(recorded["cluster"], recorded["port"])
        assert shapes["endpoints"][case] == expected, case
    for case, records in SERVICES.items():
        view = client.service(service_name(records))
        expected_view = json.loads(json.dumps(dataclasses.asdict(view)))
        assert shapes["services"][case]["view"] == expected_view, case
    # The SDK hands statuses over as enums; the recorded answers hold their names.
    assert shapes["services"]["mixed"]["status_types"] == ["ReplicaStatus", "ServiceStatus"]
