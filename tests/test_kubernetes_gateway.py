"""The gateway as the Kubernetes package starts it, on this host: each overlay's
ConfigMap and the Deployment's environment (secrets filled in as the kubelet would),
with only ports, listen addresses, file paths and the drain's pre-stop delay
changed. The probe paths answer on the probe port, /metrics on the admin port
only, the in-pod CLI's variables reach the admin API, the replica key reaches
vLLM (the simulator, with `--api-key`), and Redis runs with the shipped
redis.conf and password."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis
import trustme
import yaml

from gateway.probes import HEALTHZ, READYZ
from tests.kube import (
    SECRETS,
    config_for,
    container,
    expand_env,
    find,
    gateway_settings,
    render,
    variant_dir,
)
from tests.servers import (
    Process,
    free_port,
    run_command,
    run_simulator,
    stop,
    wait_for_port,
)

Objects = list[dict[str, Any]]
READY_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Objects]:
    base = tmp_path_factory.mktemp("kustomize")
    variants = ("single", "ha", "single-all-components")
    return {variant: render(variant_dir(base, variant)) for variant in variants}


@pytest.fixture(scope="module")
def vllm(module_tmp: Path, rendered: dict[str, Objects]) -> Iterator[Process]:
    """The upstream, serving the model that models.yaml names and requiring the
    Secret's vllm-api-key, as real vLLM would."""
    names = set()
    for objects in rendered.values():
        env = expand_env(container(find(objects, "Deployment"), "gateway")["env"], SECRETS)
        names |= {model["name"] for model in yaml.safe_load(env["VGW_MODELS"])}
    (name,) = names
    key = SECRETS["vllm-api-key"]
    with run_simulator(module_tmp, "--api-key", key, model=name) as process:
        yield process


class Pod:
    """One gateway pod's settings and environment, moved onto this host's free ports."""

    def __init__(self, objects: Objects, tmp_path: Path, vllm_url: str) -> None:
        deployment = find(objects, "Deployment", "vllm-gateway")
        self.settings = gateway_settings(objects)
        self.port, self.admin_port = free_port(), free_port()
        self.settings["listen"].update(host="127.0.0.1", port=self.port)
        self.settings["admin"]["listen"].update(host="127.0.0.1", port=self.admin_port)
        # No endpoint controller to wait for here: stopping the pod's process is then quick.
        self.settings["drain"]["pre_stop_delay"] = 0
        store = self.settings["auth"]["key_store"]
        if store["backend"] == "sqlite":
            self.sqlite_path = tmp_path / "data" / Path(store["sqlite_path"]).name
            store["sqlite_path"] = str(self.sqlite_path)
        self.config = tmp_path / "gateway.yaml"
        self.config.write_text(yaml.safe_dump(self.settings))
        self.env = expand_env(container(deployment, "gateway")["env"], SECRETS)
        models = yaml.safe_load(self.env["VGW_MODELS"])
        for model in models:
            for replica in model["replicas"]:
                replica["url"] = vllm_url
        self.model = models[0]["name"]
        self.env["VGW_MODELS"] = json.dumps(models)
        self.env["VLLM_GATEWAY_URL"] = _with_port(self.env["VLLM_GATEWAY_URL"], self.admin_port)
        self.log = tmp_path / "gateway.log"

    def run(self) -> AbstractContextManager[Process]:
        return run_command(["serve", "--config", str(self.config)], self.port, self.log, self.env)

    def cli(self, *args: str) -> str:
        """`vllm-gateway ARGS` with the pod's variables, as `kubectl exec` runs it."""
        result = subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout


def _with_port(url: str, port: int, host: str = "127.0.0.1") -> str:
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@{host}:{port}" if auth else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _wait_ready(url: str, **kwargs: Any) -> httpx.Response:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        response = httpx.get(f"{url}{READYZ}", timeout=5, **kwargs)
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def _probe_paths(objects: Objects) -> dict[str, str]:
    gateway = container(find(objects, "Deployment", "vllm-gateway"), "gateway")
    probes = ("startupProbe", "livenessProbe", "readinessProbe")
    return {probe: gateway[probe]["httpGet"]["path"] for probe in probes}


def _serve_a_key(pod: Pod, url: str) -> None:
    """A key made by the in-pod CLI (its variables name the admin listener and token)
    carries a completion to the replica, which accepts only the Secret's vllm-api-key."""
    created = json.loads(pod.cli("keys", "create", "--tenant", "k8s", "--name", "probe", "--json"))
    body = {"model": pod.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    headers = {"Authorization": f"Bearer {created['key']}"}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] > 0


def test_single_serves_its_probes_and_keeps_keys_on_the_volume(
    rendered: dict[str, Objects], vllm: Process, tmp_path: Path
) -> None:
    objects = rendered["single"]
    pod = Pod(objects, tmp_path, vllm.url)
    paths = _probe_paths(objects)
    with pod.run() as gateway:
        for probe in ("startupProbe", "livenessProbe"):
            assert httpx.get(f"{gateway.url}{paths[probe]}", timeout=5).json() == {"status": "ok"}
        ready = _wait_ready(gateway.url)
        assert paths["readinessProbe"] == READYZ
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["key_store"] == "ok"
        admin = f"http://127.0.0.1:{pod.admin_port}"
        assert "gateway_requests_total" in httpx.get(f"{admin}/metrics", timeout=5).text
        # The client Service's port answers neither /metrics nor the admin API.
        assert httpx.get(f"{gateway.url}/metrics", timeout=5).status_code == 404
        assert httpx.get(f"{gateway.url}/admin/v1/keys", timeout=5).status_code == 404
        _serve_a_key(pod, gateway.url)
    assert pod.sqlite_path.is_file()


def test_a_pod_stays_ready_while_its_model_has_no_replica(
    rendered: dict[str, Objects], tmp_path: Path
) -> None:
    """The ConfigMap's probes.ready_requires_models: false. A vLLM still loading (nothing
    listens yet) leaves the pod in the Service: its clients get the gateway's own 503,
    and /readyz's body (to a trusted caller, here a loopback peer) names the model."""
    loading = f"http://127.0.0.1:{free_port()}"
    pod = Pod(rendered["single"], tmp_path, loading)
    with pod.run() as gateway:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            ready = httpx.get(f"{gateway.url}{READYZ}", timeout=5)
            if ready.json()["checks"].get(f"model {pod.model}") == "unavailable":
                break
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.2)
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ready"


@pytest.fixture
def redis_pod(rendered: dict[str, Objects], tmp_path: Path) -> Iterator[int]:
    """redis-server as the StatefulSet runs it: the shipped redis.conf, the container's
    args with the password expanded; only its port, address and data directory moved."""
    objects = rendered["ha"]
    statefulset = find(objects, "StatefulSet", "vllm-gateway-redis")
    redis_container = container(statefulset, "redis")
    data = tmp_path / "redis-data"
    data.mkdir()
    shipped = config_for(objects, statefulset)["data"]["redis.conf"]
    conf = tmp_path / "redis.conf"
    conf.write_text(re.sub(r"^dir .*$", f"dir {data}", shipped, flags=re.MULTILINE))
    env = expand_env(redis_container["env"], SECRETS)
    password = "$(REDIS_PASSWORD)"
    args = [arg.replace(password, env["REDIS_PASSWORD"]) for arg in redis_container["args"]]
    mounts = {m["name"]: m["mountPath"] for m in redis_container["volumeMounts"]}
    assert args[0] == f"{mounts['config']}/redis.conf"
    port = free_port()
    command = [*redis_container["command"], str(conf), *args[1:]]
    command += ["--port", str(port), "--bind", "127.0.0.1"]
    log = tmp_path / "redis.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc, log)
        yield port
    finally:
        stop(proc)


def test_redis_runs_with_aof_and_its_password(redis_pod: int) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=redis_pod).ping()
    client = redis.Redis(port=redis_pod, password=SECRETS["redis-password"])
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}


def test_ha_serves_its_probes_on_the_shared_redis(
    rendered: dict[str, Objects], vllm: Process, redis_pod: int, tmp_path: Path
) -> None:
    pod = Pod(rendered["ha"], tmp_path, vllm.url)
    url = pod.env["VGW_AUTH__KEY_STORE__REDIS_URL"]
    assert urlsplit(url).password == SECRETS["redis-password"]
    pod.env["VGW_AUTH__KEY_STORE__REDIS_URL"] = _with_port(url, redis_pod)
    with pod.run() as gateway:
        assert httpx.get(f"{gateway.url}{HEALTHZ}", timeout=5).status_code == 200
        ready = _wait_ready(gateway.url)
        assert ready.status_code == 200, ready.text
        checks = ready.json()["checks"]
        assert (checks["key_store"], checks["limits"]) == ("ok", "ok")
        _serve_a_key(pod, gateway.url)
    client = redis.Redis(port=redis_pod, password=SECRETS["redis-password"])
    assert client.dbsize() > 0, "the key and its usage are in Redis"


def test_gateway_tls_serves_the_probes_over_https(
    rendered: dict[str, Objects], vllm: Process, tmp_path: Path
) -> None:
    """components/gateway-tls: the certificate Secret's files at the paths the
    variables name (moved to this host), and the probes answered over HTTPS."""
    pod = Pod(rendered["single-all-components"], tmp_path, vllm.url)
    authority = trustme.CA()
    server = authority.issue_cert("127.0.0.1", "localhost")
    tls = tmp_path / "tls"
    tls.mkdir()
    for variable, blob in (
        ("VGW_LISTEN__TLS__CERTFILE", server.cert_chain_pems[0]),
        ("VGW_LISTEN__TLS__KEYFILE", server.private_key_pem),
    ):
        path = tls / Path(pod.env[variable]).name
        blob.write_to_path(str(path))
        pod.env[variable] = str(path)
    trust = ssl.create_default_context()
    authority.configure_trust(trust)
    base = f"https://127.0.0.1:{pod.port}"
    with pod.run():
        assert httpx.get(f"{base}{HEALTHZ}", verify=trust, timeout=5).status_code == 200
        ready = _wait_ready(base, verify=trust)
        assert ready.status_code == 200, ready.text
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{pod.port}{HEALTHZ}", timeout=5)
