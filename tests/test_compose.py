"""The one-host stack of docker-compose.yml: resolved by `docker-compose config`, and rehearsed.

- `docker-compose config` (Debian's docker-compose 1.29, which needs no engine)
  resolves docker-compose.yml for both profiles, and stops naming the variable
  when a secret is missing from the env file.
- A rehearsal of the stack on loopback: redis-server, the simulator started with
  the compose file's own arguments, and the gateway with deploy/compose/gateway.yaml
  and the compose file's environment, only the service host names mapped to
  127.0.0.1. The image's HEALTHCHECK command and the upstream's compose health
  check run against them, and so do the README's `docker compose exec gateway`
  commands (create a key, check the gateway).

The files are read by tests/deploy_files.py. The Docker engine does not run on the test
machines, so the image is never built and no container starts here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from gateway.settings import load_settings
from tests.deploy_files import (
    COMPOSE_FILE,
    PROFILES,
    REPO,
    SECRET_NAME,
    SECRETS,
    STACK_SETTINGS,
    active,
    deploy_commands,
    dockerfile_env,
    exposed_port,
    flag,
    healthcheck_command,
    host_path,
    resolved,
    run_compose,
)
from tests.servers import Process, RedisServer, free_port, run_command


def test_each_profile_resolves_with_one_upstream_at_vllm_8000(tmp_path: Path) -> None:
    for profile in PROFILES:
        services = active(resolved(tmp_path, profile), profile)
        assert {"gateway", "redis", "prometheus", "grafana"} <= services.keys(), profile
        upstreams = [
            name
            for name, service in services.items()
            if "vllm" in service.get("networks", {}).get("default", {}).get("aliases", [])
        ]
        assert upstreams == [f"vllm-{profile}"], profile
        command = services[upstreams[0]]["command"]
        assert (flag(command, "--host"), flag(command, "--port")) == ("0.0.0.0", "8000")
        assert "ports" not in services[upstreams[0]], "vLLM must stay off the host's ports"


@pytest.mark.parametrize("missing", sorted(SECRETS))
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_a_missing_secret_stops_compose_naming_it(tmp_path: Path, missing: str, how: str) -> None:
    values = {name: value for name, value in SECRETS.items() if name != missing}
    if how == "empty":
        values[missing] = ""
    result = run_compose(tmp_path, values, "--profile", "sim", "config")
    assert result.returncode != 0
    assert f"set {missing} in .env" in result.stderr


def test_no_secret_has_a_value_in_the_compose_file() -> None:
    text = COMPOSE_FILE.read_text()
    for name, default in re.findall(r"\$\{(\w+):?-([^}]*)\}", text):
        assert not (SECRET_NAME.search(name) and default), f"{name} has a default"
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert required == set(SECRETS)
    for value in SECRETS.values():
        assert value not in text


def test_the_gateway_gets_valid_settings_from_the_stack(tmp_path: Path) -> None:
    model = "Qwen/Qwen2.5-1.5B-Instruct"
    services = resolved(tmp_path, "gpu", MODEL=model)["services"]
    gateway = services["gateway"]
    config = host_path(gateway, flag(gateway["command"], "--config"))
    assert config == STACK_SETTINGS
    settings = load_settings(config, {**dockerfile_env(), **gateway["environment"]})
    assert settings.auth.pepper is not None
    assert settings.auth.pepper.get_secret_value() == SECRETS["GATEWAY_PEPPER"]
    assert [t.get_secret_value() for t in settings.admin.tokens] == [SECRETS["GATEWAY_ADMIN_TOKEN"]]
    (served,) = settings.models
    (replica,) = served.replicas
    assert (served.name, replica.url) == (model, "http://vllm:8000")
    assert replica.api_key is not None
    assert replica.api_key.get_secret_value() == SECRETS["VLLM_API_KEY"]
    assert flag(services["vllm-gpu"]["command"], "--model") == model
    assert flag(services["vllm-sim"]["command"], "--model") == model
    # Both upstreams require the key the gateway sends them.
    assert services["vllm-gpu"]["environment"]["VLLM_API_KEY"] == SECRETS["VLLM_API_KEY"]
    assert flag(services["vllm-sim"]["command"], "--api-key") == SECRETS["VLLM_API_KEY"]
    assert (settings.auth.key_store.backend, settings.limits.backend) == ("redis", "redis")
    assert settings.limits_redis_url == "redis://redis:6379/0"
    assert (settings.listen.host, settings.metrics.listener) == ("0.0.0.0", "admin")
    # The admin listener (with /metrics) stays on the stack's network.
    assert settings.admin.listen is not None
    admin_port = settings.admin.listen.port
    assert gateway["environment"]["VLLM_GATEWAY_URL"] == f"http://127.0.0.1:{admin_port}"
    assert all(port["target"] != admin_port for port in gateway["ports"])
    assert gateway["ports"][0]["target"] == settings.listen.port == exposed_port()
    # The file holds no secret: they all come from the environment.
    assert not SECRET_NAME.search(re.sub(r"(?m)#.*$", "", STACK_SETTINGS.read_text()))


def test_every_mount_and_scrape_target_exists(tmp_path: Path) -> None:
    config = resolved(tmp_path, "sim")
    services = config["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("/"):
                assert Path(source).exists(), f"{name}: {source}"
                assert Path(source).is_relative_to(REPO), f"{name}: {source}"
            else:
                assert source in config["volumes"], f"{name}: {source}"
        if "build" in service:
            assert (Path(service["build"]["context"]) / "Dockerfile").is_file()
    stack = yaml.safe_load(STACK_SETTINGS.read_text())
    assert stack["metrics"]["listener"] == "admin"
    listens = {"gateway": stack["admin"]["listen"]["port"], "vllm": 8000, "prometheus": 9090}
    prometheus = services["prometheus"]
    scrape = yaml.safe_load(host_path(prometheus, "/etc/prometheus/prometheus.yml").read_text())
    targets = {
        target
        for job in scrape["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    # The replicas are the gateway's own: Prometheus asks its admin listener for them.
    discovered = [sd for job in scrape["scrape_configs"] for sd in job.get("http_sd_configs", [])]
    assert [urlsplit(sd["url"]).path for sd in discovered] == ["/admin/v1/prometheus/targets"]
    targets |= {urlsplit(sd["url"]).netloc for sd in discovered}
    assert targets == {f"gateway:{listens['gateway']}"}
    for target in targets:
        host, port = target.split(":")
        assert listens[host] == int(port), target
    grafana = services["grafana"]
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert source["url"] == f"http://prometheus:{listens['prometheus']}"
    dashboards = host_path(grafana, "/var/lib/grafana/dashboards")
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards / Path(home).name).is_file()


def test_the_stack_persists_and_pins(tmp_path: Path) -> None:
    services = resolved(tmp_path, "gpu")["services"]
    redis = services["redis"]
    assert flag(redis["command"], "--appendonly") == "yes"
    assert any(volume.endswith(":/data:rw") for volume in redis["volumes"])
    gpu = services["vllm-gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert any(":/root/.cache/huggingface" in volume for volume in gpu["volumes"])
    # One vLLM release in the repo: the compose stack's is the SkyPilot task's.
    task = yaml.safe_load((REPO / "sky" / "vllm.sky.yaml").read_text())
    assert task["resources"]["image_id"] == f"docker:{gpu['image']}"
    for name, service in services.items():
        image = service["image"]
        assert re.search(r":v?\d+\.\d+", image) or image == "vllm-gateway:local", name
    assert services["gateway"]["depends_on"]["redis"]["condition"] == "service_healthy"


# The stack rehearsed on loopback


@dataclass
class Rehearsal:
    services: dict[str, Any]
    gateway: Process
    sim: Process
    # The gateway container's environment, its host names mapped to loopback.
    env: dict[str, str]


def on_loopback(command: list[str], port: int) -> list[str]:
    mapped = list(command)
    mapped[mapped.index("--host") + 1] = "127.0.0.1"
    mapped[mapped.index("--port") + 1] = str(port)
    return mapped


@pytest.fixture(scope="module")
def rehearsal(module_tmp: Path) -> Iterator[Rehearsal]:
    """The sim profile's processes as compose starts them, minus Docker."""
    services = resolved(module_tmp, "sim")["services"]
    redis = RedisServer(module_tmp)
    redis.start()
    sim_port, port, admin_port = free_port(), free_port(), free_port()
    sim_command = on_loopback(services["vllm-sim"]["command"], sim_port)
    gateway = services["gateway"]
    command = list(gateway["command"])
    command[command.index("--config") + 1] = str(host_path(gateway, flag(command, "--config")))
    url = f"http://127.0.0.1:{port}"
    env = {**dockerfile_env(), **gateway["environment"]}
    env |= {
        "VGW_MODELS": env["VGW_MODELS"].replace("http://vllm:8000", f"http://127.0.0.1:{sim_port}"),
        "VGW_AUTH__KEY_STORE__REDIS_URL": redis.url,
        "VGW_LISTEN__HOST": "127.0.0.1",
        "VGW_LISTEN__PORT": str(port),
        "VGW_ADMIN__LISTEN__HOST": "127.0.0.1",
        "VGW_ADMIN__LISTEN__PORT": str(admin_port),
        "VLLM_GATEWAY_URL": f"http://127.0.0.1:{admin_port}",
        "HEALTHCHECK_URL": f"{url}/healthz",
    }
    try:
        with (
            run_command(sim_command, sim_port, module_tmp / "sim.log") as sim,
            run_command(command, port, module_tmp / "gateway.log", env) as process,
        ):
            yield Rehearsal(services, process, sim, env)
    finally:
        redis.stop()


def run_probe(command: list[str], **env: str) -> int:
    """A health-check command, `python` being this interpreter; its exit status."""
    assert command[0] in ("python", "python3"), command
    full_env = {"PATH": os.environ["PATH"], **env}
    run = subprocess.run([sys.executable, *command[1:]], env=full_env, timeout=30, check=False)
    return run.returncode


def test_the_image_healthcheck_passes_only_while_the_gateway_serves(rehearsal: Rehearsal) -> None:
    assert run_probe(healthcheck_command(), HEALTHCHECK_URL=rehearsal.env["HEALTHCHECK_URL"]) == 0
    gone = f"http://127.0.0.1:{free_port()}/healthz"
    assert run_probe(healthcheck_command(), HEALTHCHECK_URL=gone) != 0


def test_the_upstream_healthcheck_follows_the_engine(rehearsal: Rehearsal) -> None:
    test = rehearsal.services["vllm-sim"]["healthcheck"]["test"]
    assert rehearsal.services["vllm-gpu"]["healthcheck"]["test"] == test
    assert test[0] == "CMD"
    probe = [word.replace(":8000/", f":{rehearsal.sim.port}/") for word in test[1:]]
    assert run_probe(probe) == 0
    # /health needs no key; the model routes do.
    assert httpx.get(f"{rehearsal.sim.url}/v1/models").status_code == 401
    httpx.put(f"{rehearsal.sim.url}/sim/health", json={"status": 503}).raise_for_status()
    try:
        assert run_probe(probe) != 0
    finally:
        httpx.put(f"{rehearsal.sim.url}/sim/health", json={"status": 200}).raise_for_status()


def test_the_readme_operator_flow_runs_on_the_stack(rehearsal: Rehearsal) -> None:
    """The README's `docker compose exec gateway ...` lines, in order, in the gateway's
    environment: a key is created, then the gateway is checked with it."""
    # Ready once Redis answers and the simulator passed a health check.
    ready = httpx.get(f"{rehearsal.gateway.url}/readyz", timeout=10)
    for _ in range(60):
        if ready.status_code == 200:
            break
        time.sleep(0.25)
        ready = httpx.get(f"{rehearsal.gateway.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    prefix = ["docker", "compose", "exec", "gateway", "vllm-gateway"]
    lines = [words[5:] for words in deploy_commands() if words[:5] == prefix]
    assert [words[:2] for words in lines][:2] == [["keys", "create"], ["check", "--url"]]
    key = ""
    for words in lines:
        args = [word.replace("http://127.0.0.1:8080", rehearsal.gateway.url) for word in words]
        args = [key if word == "$KEY" else word for word in args]
        result = subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            env={**os.environ, **rehearsal.env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, (words, result.stdout, result.stderr)
        key = next(iter(re.findall(r"^key: (vgw_\S+)$", result.stdout, re.M)), key)
    assert key
