"""Replicas found by DNS, as a Kubernetes headless Service lists its pods, with a real
DNS server (dnsmasq, `tests/dns_server.py`) and simulators on distinct loopback
addresses that share one port, so only the A records tell them apart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from gateway.settings import DnsSettings
from gateway.upstreams.dns_source import DnsSource
from gateway.upstreams.endpoints import DiscoveryError
from tests.dns_server import DnsServer, Srv, run_dns_server
from tests.servers import Process, free_port, gateway_config, run_gateway, run_simulator

MODEL = "sim-model"
SERVICE = "vllm.test"
ADMIN_TOKEN = "admin-token-for-the-dns-tests-0123456789abcdef"
HOSTS = ("127.0.0.2", "127.0.0.3")
WAIT_S = 30.0


def source(dns: DnsServer, **given: Any) -> DnsSource:
    given.setdefault("port", 8000)
    return DnsSource(
        given.pop("name", SERVICE), nameservers=[("127.0.0.1", dns.port)], timeout=1.0, **given
    )


def endpoints(found: DnsSource) -> list[str]:
    return anyio.run(found.endpoints)


def test_addresses_become_replicas_and_nxdomain_is_none(tmp_path: Path) -> None:
    addresses = {SERVICE: ["127.0.0.3", "127.0.0.2", "::1"], "only.test": []}
    with run_dns_server(tmp_path, addresses) as dns:
        found = endpoints(source(dns))
        assert found == ["http://127.0.0.2:8000", "http://127.0.0.3:8000", "http://[::1]:8000"]
        assert endpoints(source(dns, scheme="https", port=8443))[0] == "https://127.0.0.2:8443"
        # The Service has no ready pod: NXDOMAIN from a resolver that works is "none".
        dns.set_addresses({SERVICE: []})
        assert endpoints(source(dns)) == []


def test_a_resolver_that_fails_is_an_outage(tmp_path: Path) -> None:
    with run_dns_server(tmp_path, {SERVICE: ["127.0.0.2"]}) as dns:
        # Outside its zone and with no upstream, dnsmasq answers REFUSED.
        with pytest.raises(DiscoveryError, match=r"dns vllm\.other port 8000: A vllm\.other"):
            endpoints(source(dns, name="vllm.other"))
        dns.stop()
        with pytest.raises(DiscoveryError, match=r"timed out|lifetime"):
            endpoints(source(dns))


def test_srv_records_give_targets_and_ports(tmp_path: Path) -> None:
    srv = [
        Srv("_http._tcp.vllm.test", "pod-a.test", 8001),
        Srv("_http._tcp.vllm.test", "pod-b.test", 8002),
    ]
    addresses = {"pod-a.test": ["127.0.0.2"], "pod-b.test": ["127.0.0.3", "::1"]}
    with run_dns_server(tmp_path, addresses, srv) as dns:
        found = endpoints(source(dns, name="_http._tcp.vllm.test", port=None, srv=True))
        assert found == ["http://127.0.0.2:8001", "http://127.0.0.3:8002", "http://[::1]:8002"]
        # A pod gone from its target name: only the others are reported.
        dns.set_addresses({"pod-a.test": [], "pod-b.test": ["127.0.0.3"]})
        found = endpoints(source(dns, name="_http._tcp.vllm.test", port=None, srv=True))
        assert found == ["http://127.0.0.3:8002"]


def test_settings_need_a_port_unless_srv_and_ip_nameservers() -> None:
    given = DnsSettings(name=SERVICE, port=8000, nameservers=["127.0.0.1:5353", "[::1]:53", "::1"])
    assert given.interval is None and given.scheme == "http"
    for bad in (
        {"name": SERVICE},
        {"name": SERVICE, "port": 8000, "srv": True},
        {"name": SERVICE, "port": 8000, "nameservers": ["dns.example:53"]},
        {"name": SERVICE, "port": 8000, "nameservers": ["127.0.0.1:99999"]},
    ):
        with pytest.raises(ValueError):
            DnsSettings.model_validate(bad)


# A gateway process discovering simulators through dnsmasq


def dns_gateway_config(dns: DnsServer, port: int, **dns_fields: object) -> dict[str, object]:
    config = gateway_config(free_port(), {MODEL: []})
    entry = {"name": SERVICE, "port": port, "interval": 0.2, "nameservers": [dns.nameserver]}
    config["models"] = [{"name": MODEL, "discovery": [{"dns": {**entry, **dns_fields}}]}]
    config["upstreams"] = {"health": {"interval": 0.5, "timeout": 2.0}}
    config["admin"] = {"tokens": [ADMIN_TOKEN]}
    return config


def replicas(gateway: Process) -> dict[str, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    response = httpx.get(f"{gateway.url}/admin/v1/upstreams", headers=headers, timeout=5)
    response.raise_for_status()
    [model] = response.json()["models"]
    return {replica["url"]: replica for replica in model["replicas"]}


def wait_until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def states(gateway: Process) -> dict[str, str]:
    return {url: replica["state"] for url, replica in replicas(gateway).items()}


@pytest.fixture
def sims(tmp_path: Path) -> Iterator[list[Process]]:
    port = free_port()
    slow = ("--itl-ms", "40")
    with (
        run_simulator(tmp_path, *slow, host=HOSTS[0], port=port) as one,
        run_simulator(tmp_path, *slow, host=HOSTS[1], port=port) as two,
    ):
        yield [one, two]


def chat(**fields: object) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}


def test_replicas_join_drain_under_a_stream_and_survive_an_outage(
    tmp_path: Path, sims: list[Process]
) -> None:
    first, second = sims
    with (
        run_dns_server(tmp_path, {SERVICE: [first.host]}) as dns,
        run_gateway(tmp_path, dns_gateway_config(dns, first.port)) as gateway,
    ):
        wait_until("the first pod joins", lambda: states(gateway) == {first.url: "healthy"})
        answered = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json=chat(max_tokens=2),
            headers=gateway.auth,
            timeout=30,
        )
        assert answered.status_code == 200, answered.text
        dns.set_addresses({SERVICE: [first.host, second.host]})
        both = {first.url: "healthy", second.url: "healthy"}
        wait_until("the second pod joins", lambda: states(gateway) == both)
        streamed = stream_on_one_replica(gateway, dns, sims)
        # The stream ran to its end on the replica that left DNS meanwhile.
        assert streamed[-1] == "data: [DONE]"
        assert sum(line.startswith("data: {") for line in streamed) >= 80
        # Drained: removed at the next look.
        wait_until("the drained replica leaves", lambda: len(replicas(gateway)) == 1)
        assert "is gone: drains" in gateway.log()
        (kept,) = replicas(gateway)
        # The resolver goes away: the pool keeps its last replica and serves.
        dns.stop()
        wait_until("the outage is logged", lambda: "cannot refresh" in gateway.log())
        assert states(gateway) == {kept: "healthy"}
        again = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json=chat(max_tokens=2),
            headers=gateway.auth,
            timeout=30,
        )
        assert again.status_code == 200, again.text


def stream_on_one_replica(gateway: Process, dns: DnsServer, sims: list[Process]) -> list[str]:
    """Start a slow stream, remove its replica from DNS while it runs; return its lines."""
    lines: list[str] = []
    body = chat(max_tokens=100, stream=True)

    def read() -> None:
        url = f"{gateway.url}/v1/chat/completions"
        with httpx.stream("POST", url, json=body, headers=gateway.auth, timeout=60) as response:
            lines.extend(line for line in response.iter_lines() if line)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        wait_until("the stream is in flight", lambda: busy(gateway) is not None)
        serving = busy(gateway)
        assert serving is not None
        (other,) = [sim for sim in sims if sim.url != serving]
        dns.set_addresses({SERVICE: [other.host]})
        wait_until("its replica drains", lambda: states(gateway).get(serving) == "draining")
        assert states(gateway)[other.url] == "healthy"
        # Draining with a request in flight: still listed, given nothing new.
        assert replicas(gateway)[serving]["outstanding"] == 1
    finally:
        reader.join(timeout=60)
    return lines


def busy(gateway: Process) -> str | None:
    serving = [url for url, replica in replicas(gateway).items() if replica["outstanding"]]
    return serving[0] if serving else None
