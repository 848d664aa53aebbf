"""The gateway installed with its `skypilot` extra, as a user would: `serve` from .venv-sky.

SkyPilot pins uvicorn<0.36 and click<8.2, so that venv resolves older ones
than .venv does; the gateway must run on them. Here it serves a static replica
(a simulator) beside models discovered from a SkyPilot cluster and a SkyServe
service that do not exist, asking the session's local API server
(skypilot_answers/api_server.py, started and stopped once for the session),
and it serves HTTPS with its own TLS context. The client is httpx in this
process, whose venv has no `sky`.
"""

from __future__ import annotations

import importlib.metadata
import json
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from packaging.version import Version

from tests.servers import (
    TEST_PEPPER,
    Process,
    free_port,
    gateway_config,
    run_gateway,
    write_config,
)
from tests.skypilot_answers import harness
from tests.skypilot_answers.harness import LocalApiServer

pytest_plugins = ["tests.skypilot_answers.api_server"]

MODEL, DISCOVERED, SERVED = "sim-model", "sky-model", "skyserve-model"
CLUSTER, SERVICE = "no-such-cluster", "no-such-service"
SOURCE = f"skypilot cluster {CLUSTER} port 8000"
ADMIN_TOKEN = "admin-token-for-the-skypilot-tests-0123456789"
CHAT: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
# The first test to use the API server may wait for it to start.
LIVE_TIMEOUT_S = 480
WAIT_S = 120.0


def wait_for(what: str, found: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if answer := found():
            return answer
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {WAIT_S:g} s")


def discovery_config(port: int, sim: Process, **extra: object) -> dict[str, object]:
    config = gateway_config(port, {MODEL: [sim.url]}, **extra)
    models = config["models"]
    assert isinstance(models, list)
    cluster = {"cluster": CLUSTER, "port": 8000}
    models.append({"name": DISCOVERED, "discovery": [{"skypilot_cluster": cluster}]})
    models.append({"name": SERVED, "discovery": [{"skyserve": {"service": SERVICE}}]})
    return config


@pytest.fixture(scope="module")
def sky_versions() -> dict[str, str]:
    script = (
        "import importlib.metadata as m, json;"
        "print(json.dumps({n: m.version(n) for n in"
        " ('uvicorn', 'click', 'skypilot', 'vllm-gateway')}))"
    )
    done = subprocess.run(
        [str(harness.sky_python()), "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    versions: dict[str, str] = json.loads(done.stdout)
    return versions


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, sim: Process, sky_api_server: LocalApiServer) -> Iterator[Process]:
    config = discovery_config(
        free_port(),
        sim,
        admin={"tokens": [ADMIN_TOKEN]},
        upstreams={"discovery_interval": 1.0},
    )
    python = str(harness.sky_python())
    with run_gateway(module_tmp, config, sky_api_server.env, python=python) as process:
        yield process


def logged_warnings(gateway: Process, source: str) -> list[str]:
    found = []
    for line in gateway.log().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry["level"] == "warning" and entry["message"].startswith(source):
                found.append(entry["message"])
    return found


def test_the_venv_has_skypilots_pins_and_the_gateway(sky_versions: dict[str, str]) -> None:
    assert Version(sky_versions["uvicorn"]) < Version("0.36")
    assert Version(sky_versions["click"]) < Version("8.2")
    assert Version(sky_versions["skypilot"]) >= Version("0.14")
    assert sky_versions["vllm-gateway"] == importlib.metadata.version("vllm-gateway")


def test_this_venv_has_no_skypilot() -> None:
    # Installing it here would break .venv's pins (pip check): it belongs in .venv-sky.
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("skypilot")


@pytest.mark.timeout(LIVE_TIMEOUT_S)
def test_chat_completions_through_the_static_replica(gateway: Process) -> None:
    assert gateway.proc.args[0] == str(harness.SKY_PYTHON)  # type: ignore[index]
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": MODEL, **CHAT},
        headers=gateway.auth,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 3


@pytest.mark.timeout(LIVE_TIMEOUT_S)
@pytest.mark.parametrize(
    ("model", "source"), [(DISCOVERED, SOURCE), (SERVED, f"skyserve service {SERVICE} (replicas)")]
)
def test_a_source_that_cannot_be_asked_leaves_its_model_without_replicas(
    gateway: Process, model: str, source: str
) -> None:
    wait_for(f"warning about {source}", lambda: logged_warnings(gateway, source))
    upstreams = httpx.get(
        f"{gateway.url}/admin/v1/upstreams",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    ).json()
    pools = {pool["model"]: pool for pool in upstreams["models"]}
    assert pools[model]["replicas"] == [], upstreams
    assert pools[MODEL]["usable"] == 1, upstreams
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": model, **CHAT},
        headers=gateway.auth,
        timeout=30,
    )
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "no_healthy_replica"


@pytest.mark.timeout(LIVE_TIMEOUT_S)
def test_the_log_says_why_once_while_discovery_keeps_asking(
    gateway: Process, sky_api_server: LocalApiServer, tmp_path: Path
) -> None:
    [warning] = wait_for("warning about the cluster", lambda: logged_warnings(gateway, SOURCE))
    assert warning == (
        f"{SOURCE}: cannot refresh, keeping its last replicas: "
        f"{SOURCE}: ClusterNotUpError: Cluster '{CLUSTER}' not found."
    )

    def asked() -> list[Any]:
        answer = harness.probe("requests", tmp_path, sky_api_server.env, CLUSTER)["requests"]
        return answer if len(answer) >= 3 else []

    # The API server got the gateway's question at least three times (every second)...
    requests = wait_for("three requests for the cluster", asked)
    assert {request["name"] for request in requests} == {"sky.endpoints"}
    assert "SUCCEEDED" not in {request["status"] for request in requests}
    # ...and the gateway said so once: the next warning is due in discovery.WARN_EVERY_S.
    assert logged_warnings(gateway, SOURCE) == [warning]
    assert "Traceback" not in gateway.log(), gateway.log()


# HTTPS with the gateway's own context: TLS 1.2 at least, client certificates required.


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def mtls_gateway(module_tmp: Path, sim: Process, ca: trustme.CA) -> Iterator[Process]:
    cert = ca.issue_cert("127.0.0.1")
    files = {name: module_tmp / f"{name}.pem" for name in ("certfile", "keyfile", "client_ca")}
    files["certfile"].write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(files["keyfile"])
    ca.cert_pem.write_to_path(files["client_ca"])
    config = gateway_config(free_port(), {MODEL: [sim.url]})
    listen = config["listen"]
    assert isinstance(listen, dict)
    listen["tls"] = {name: str(path) for name, path in files.items()}
    with run_gateway(module_tmp, config, python=str(harness.sky_python())) as process:
        yield process


def client_context(ca: trustme.CA, *, client_cert: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if client_cert:
        ca.issue_cert("client@example.com").configure_cert(context)
    return context


def test_https_with_tls_1_2_and_a_client_certificate(mtls_gateway: Process, ca: trustme.CA) -> None:
    context = client_context(ca)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with httpx.Client(verify=context, headers=mtls_gateway.auth, timeout=30) as client:
        response = client.post(
            f"https://127.0.0.1:{mtls_gateway.port}/v1/chat/completions",
            json={"model": MODEL, **CHAT},
        )
        tls = response.extensions["network_stream"].get_extra_info("ssl_object")
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 3
    assert tls.version() == "TLSv1.2"


def test_https_without_a_client_certificate_is_refused(
    mtls_gateway: Process, ca: trustme.CA
) -> None:
    # uvicorn's own context would not ask for one: this is the gateway's context at work.
    context = client_context(ca, client_cert=False)
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.get(f"https://127.0.0.1:{mtls_gateway.port}/v1/models", verify=context, timeout=30)


def test_tls_1_1_is_refused_by_the_server(mtls_gateway: Process, ca: trustme.CA) -> None:
    context = client_context(ca)
    with warnings.catch_warnings():
        # Offering TLS 1.1 is deprecated, which is exactly what this client must do.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    # At OpenSSL's default security level the client would refuse by itself (NO_CIPHERS_
    # AVAILABLE); at 0 it offers TLS 1.1, and the server ends the handshake: an alert, or
    # under uvloop, which does not flush it, an end of file.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(httpx.ConnectError, match=r"PROTOCOL_VERSION|UNEXPECTED_EOF"):
        httpx.get(f"https://127.0.0.1:{mtls_gateway.port}/v1/models", verify=context, timeout=30)


# Without the extra.


def test_without_the_extra_the_gateway_says_what_to_install(module_tmp: Path, sim: Process) -> None:
    config = discovery_config(free_port(), sim)
    config["auth"] = {"pepper": TEST_PEPPER, "key_store": {"sqlite_path": str(module_tmp / "k.db")}}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(write_config(module_tmp, config)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0, done.stdout
    assert "pip install 'vllm-gateway[skypilot]'" in done.stderr, done.stderr
