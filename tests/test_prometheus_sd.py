"""Prometheus finds the replicas the gateway knows: `GET /admin/v1/prometheus/targets`
(HTTP service discovery) against a gateway whose replicas come from DNS (dnsmasq),
read by a real Prometheus with the shipped `vllm` job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import promql
from tests.dns_server import DnsServer, run_dns_server
from tests.promql import HttpSd, Prometheus
from tests.servers import Process, free_port, gateway_config, run_gateway, run_simulator

MODEL = "sim-model"
SERVICE = "vllm.test"
ADMIN_TOKEN = "admin-token-for-the-sd-tests-0123456789abcdef"
METRICS_TOKEN = "metrics-token-for-the-sd-tests-0123456789abcd"
REPLICA_KEY = "replica-key-for-the-sd-tests-0123456789abcdef"
HOSTS = ("127.0.0.2", "127.0.0.3")
TARGETS = "/admin/v1/prometheus/targets"
WAIT_S = 90.0


def wait_until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def sd_config(dns: DnsServer, port: int) -> dict[str, object]:
    config = gateway_config(free_port(), {"static-model": ["http://user:pw@127.0.0.1:9/v1"]})
    dns_entry = {"name": SERVICE, "port": port, "interval": 0.2, "nameservers": [dns.nameserver]}
    discovered = {"name": MODEL, "api_key": REPLICA_KEY, "discovery": [{"dns": dns_entry}]}
    config["models"] = [*config["models"], discovered]  # type: ignore[list-item]
    config["upstreams"] = {"health": {"interval": 0.5}}
    config["admin"] = {"tokens": [ADMIN_TOKEN]}
    config["metrics"] = {"token": METRICS_TOKEN}
    return config


def admin_on_its_listener(config: dict[str, object], port: int) -> dict[str, object]:
    """The compose stack's shape: the admin API and /metrics on their own listener."""
    return config | {
        "admin": {"tokens": [ADMIN_TOKEN], "listen": {"port": port}},
        "metrics": {"listener": "admin"},
    }


def targets(gateway: Process, token: str | None) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.get(f"{gateway.url}{TARGETS}", headers=headers, timeout=5)


@pytest.fixture
def sims(tmp_path: Path) -> Iterator[list[Process]]:
    port = free_port()
    with (
        run_simulator(tmp_path, host=HOSTS[0], port=port) as one,
        run_simulator(tmp_path, host=HOSTS[1], port=port) as two,
    ):
        yield [one, two]


def test_the_targets_route_lists_replicas_without_credentials(
    tmp_path: Path, sims: list[Process]
) -> None:
    first, _ = sims
    with (
        run_dns_server(tmp_path, {SERVICE: [first.host]}) as dns,
        run_gateway(tmp_path, sd_config(dns, first.port)) as gateway,
    ):
        wait_until("the pod is found", lambda: len(targets(gateway, ADMIN_TOKEN).json()) == 2)
        answer = targets(gateway, METRICS_TOKEN)
        assert answer.status_code == 200
        assert answer.json() == targets(gateway, ADMIN_TOKEN).json()
        static, found = answer.json()
        assert static == {
            "targets": ["127.0.0.1:9"],
            "labels": {
                "model": "static-model",
                "source": "static",
                "__scheme__": "http",
                "__metrics_path__": "/metrics",
            },
        }
        assert found["targets"] == [f"{first.host}:{first.port}"]
        assert found["labels"]["model"] == MODEL
        assert found["labels"]["source"] == f"dns {SERVICE} port {first.port}"
        assert "pw" not in answer.text and REPLICA_KEY not in answer.text
        # The scrape token reads this route only; nobody else reads it.
        for token in (None, "not-a-token", REPLICA_KEY):
            assert targets(gateway, token).status_code == 401
        keys = httpx.get(f"{gateway.url}/admin/v1/keys", headers=auth(METRICS_TOKEN), timeout=5)
        assert keys.status_code == 401
        assert keys.json()["error"]["code"] == "invalid_admin_credentials"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def active(prometheus: Prometheus) -> dict[str, dict[str, Any]]:
    """The `vllm` job's active targets, by address."""
    response = httpx.get(f"{prometheus.url}/api/v1/targets", timeout=10)
    response.raise_for_status()
    found = response.json()["data"]["activeTargets"]
    return {t["labels"]["instance"]: t for t in found if t["labels"]["job"] == "vllm"}


def scraped_instances(prometheus: Prometheus) -> set[str]:
    series = prometheus.query(f'vllm:num_requests_running{{model="{MODEL}"}}')
    return {sample["metric"]["instance"] for sample in series}


def test_prometheus_scrapes_the_replicas_dns_finds(tmp_path: Path, sims: list[Process]) -> None:
    """As the compose stack runs it: the list and /metrics on the admin listener
    (`metrics.listener: admin`), read without a credential, as the shipped job does."""
    first, second = sims
    addresses = [f"{sim.host}:{sim.port}" for sim in sims]
    admin_port = free_port()
    with (
        run_dns_server(tmp_path, {SERVICE: []}) as dns,
        run_gateway(tmp_path, admin_on_its_listener(sd_config(dns, first.port), admin_port)),
    ):
        admin_url = f"http://127.0.0.1:{admin_port}"
        assert httpx.get(f"{admin_url}/admin/v1/keys", timeout=5).status_code == 401
        sd = HttpSd(f"{admin_url}{TARGETS}", None)
        config = promql.scrape_config(
            {"vllm-gateway": [f"127.0.0.1:{admin_port}"]}, discovered={"vllm": sd}
        )
        with promql.run_prometheus(tmp_path, config) as prometheus:
            dns.set_addresses({SERVICE: [first.host, second.host]})
            wait_until("both are targets", lambda: set(addresses) <= set(active(prometheus)))
            wait_until("both are scraped", lambda: set(addresses) <= scraped_instances(prometheus))
            for address in addresses:
                labels = active(prometheus)[address]["labels"]
                assert (labels["model"], labels["source"]) == (
                    MODEL,
                    f"dns {SERVICE} port {first.port}",
                )

            def both_up() -> bool:
                up = prometheus.values('up{job="vllm"}', "instance")
                return all(up.get((address,)) == 1.0 for address in addresses)

            wait_until("both are up", both_up)
            dns.set_addresses({SERVICE: [second.host]})
            wait_until("the first is dropped", lambda: addresses[0] not in active(prometheus))
            assert addresses[1] in active(prometheus)
