"""`GET /admin/v1/upstreams` and `vllm-gateway upstreams`, against real gateways and a
real simulator: one gateway has a model whose only replica is dead, the other does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import Process, free_port, gateway_config, run_gateway, run_simulator

ADMIN_TOKEN = "admin-token-for-the-upstreams-tests-0123456789"
REPLICA_KEY = "replica-api-key-that-must-never-be-shown-0123"
CLI_TIMEOUT_S = 30
# Checks and load readings five times a second, and one failed check takes a replica out.
FAST_CHECKS = {
    "health": {"interval": 0.2, "timeout": 1, "unhealthy_threshold": 1},
    "load": {"picking": "load_aware", "scrape_interval": 0.2},
}


@pytest.fixture(scope="module")
def keyed_sim(module_tmp: Path) -> Iterator[Process]:
    """A simulator that wants REPLICA_KEY on /v1: the gateway must send it, and hide it."""
    with run_simulator(module_tmp, "--api-key", REPLICA_KEY) as process:
        yield process


@pytest.fixture(scope="module")
def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def admin_config(models: dict[str, list[str]], keyed: str) -> dict[str, object]:
    config = gateway_config(free_port(), models)
    config["admin"] = {"tokens": [ADMIN_TOKEN]}
    config["upstreams"] = FAST_CHECKS
    model_list = config["models"]
    assert isinstance(model_list, list)
    for model in model_list:
        for replica in model["replicas"]:
            if replica["url"] == keyed:
                replica["api_key"] = REPLICA_KEY
    return config


@pytest.fixture(scope="module")
def degraded(module_tmp: Path, keyed_sim: Process, dead_url: str) -> Iterator[Process]:
    """`sim-model` on the simulator and a dead URL; `dead-model` on the dead URL only."""
    models = {"sim-model": [keyed_sim.url, dead_url], "dead-model": [dead_url]}
    with run_gateway(module_tmp, admin_config(models, keyed_sim.url)) as process:
        wait_for_checks(process)
        yield process


@pytest.fixture(scope="module")
def serving(module_tmp: Path, keyed_sim: Process, dead_url: str) -> Iterator[Process]:
    """`sim-model` on the simulator and a dead URL: one usable replica is enough."""
    models = {"sim-model": [keyed_sim.url, dead_url]}
    with run_gateway(module_tmp, admin_config(models, keyed_sim.url)) as process:
        wait_for_checks(process)
        yield process


def upstreams_json(gateway: Process, token: str | None = ADMIN_TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{gateway.url}/admin/v1/upstreams", headers=headers, timeout=5)


def wait_for_checks(gateway: Process) -> None:
    """Until every replica has been checked and the live one's load read."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        models = upstreams_json(gateway).json()["models"]
        replicas = [replica for model in models for replica in model["replicas"]]
        checked = all(r["last_check_age_s"] is not None for r in replicas)
        if checked and any(r["load"] is not None for r in replicas):
            return
        time.sleep(0.1)
    raise AssertionError(f"replicas not checked in time: {models}\n{gateway.log()}")


def upstreams(
    gateway: Process | None, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `vllm-gateway upstreams ARGS`, with --url and --admin-token unless `gateway` is None."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_GATEWAY_")}
    flags = ["--url", gateway.url, "--admin-token", ADMIN_TOKEN] if gateway else []
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "upstreams", *args, *flags],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    for secret in (ADMIN_TOKEN, REPLICA_KEY):
        assert secret not in result.stdout + result.stderr
    return result


def by_url(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {replica["url"]: replica for replica in model["replicas"]}


def test_route_shows_each_replica_state_and_never_its_key(
    degraded: Process, keyed_sim: Process, dead_url: str
) -> None:
    response = upstreams_json(degraded)
    assert response.status_code == 200
    assert REPLICA_KEY not in response.text
    models = response.json()["models"]
    assert [(m["model"], m["usable"]) for m in models] == [("sim-model", 1), ("dead-model", 0)]
    live, dead = by_url(models[0])[keyed_sim.url], by_url(models[0])[dead_url]
    # /v1/models answered only because the gateway sent the key it does not show.
    assert live["models"] == ["sim-model"]
    assert (live["state"], live["usable"], live["source"]) == ("healthy", True, "static")
    assert (dead["state"], dead["usable"], dead["load"]) == ("unhealthy", False, None)
    assert live["outstanding"] == dead["outstanding"] == 0
    assert 0 <= live["last_check_age_s"] < 5
    load = live["load"]
    assert load["waiting"] == load["running"] == 0
    assert 0 <= load["kv_cache"] <= 1 and 0 <= load["age_s"] < 5
    assert by_url(models[1])[dead_url]["state"] == "unhealthy"
    assert REPLICA_KEY not in degraded.log()


@pytest.mark.parametrize("token", [None, "not-the-admin-token"])
def test_route_requires_an_admin_credential(degraded: Process, token: str | None) -> None:
    response = upstreams_json(degraded, token)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_admin_credentials"


def test_cli_table_names_the_model_without_a_usable_replica(
    degraded: Process, keyed_sim: Process, dead_url: str
) -> None:
    result = upstreams(degraded)
    assert result.returncode == 1, result.stderr
    assert "no usable replica for: dead-model" in result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:3] == ["MODEL", "REPLICA", "STATE"]
    cells = [row.split() for row in rows]
    assert [c[:3] for c in cells] == [
        ["sim-model", keyed_sim.url, "healthy"],
        ["sim-model", dead_url, "unhealthy"],
        ["dead-model", dead_url, "unhealthy"],
    ]
    # In flight, waiting, running, KV, "<age>s ago", source; no load for a dead replica.
    assert cells[0][3:6] == ["0", "0", "0"] and cells[0][6].endswith("%")
    assert cells[0][7].endswith("s") and cells[0][-1] == "static"
    assert cells[1][4:7] == ["-", "-", "-"]


def test_cli_json_is_the_route_answer(degraded: Process) -> None:
    result = upstreams(degraded, "--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert [(m["model"], m["usable"]) for m in data["models"]] == [
        ("sim-model", 1),
        ("dead-model", 0),
    ]
    assert "dead-model" in result.stderr


def test_cli_exits_0_when_every_model_has_a_usable_replica(serving: Process) -> None:
    env = {"VLLM_GATEWAY_URL": serving.url, "VLLM_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
    result = upstreams(None, env=env)
    assert result.returncode == 0, result.stderr
    assert [row.split()[2] for row in result.stdout.splitlines()[1:]] == ["healthy", "unhealthy"]
    assert result.stderr == ""


def test_cli_wrong_token_exits_1_as_keys_does(serving: Process) -> None:
    env = {"VLLM_GATEWAY_ADMIN_TOKEN": "not-the-admin-token"}
    result = upstreams(None, "--url", serving.url, env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("error: 401 ")


def test_cli_unreachable_gateway_exits_1() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = upstreams(None, "--url", url, "--admin-token", ADMIN_TOKEN)
    assert result.returncode == 1
    assert f"cannot connect to {url}" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--admin-token", ADMIN_TOKEN], "no gateway URL"),
        (["--url", "http://127.0.0.1:1"], "no admin token"),
        (["--url", "ftp://gateway", "--admin-token", ADMIN_TOKEN], "not an http:// or https://"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = upstreams(None, *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_help_documents_the_exit_codes() -> None:
    result = upstreams(None, "--help")
    assert result.returncode == 0
    assert "exit codes:" in result.stdout
    assert "some model has no usable replica" in result.stdout
