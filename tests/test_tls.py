"""HTTPS on the listener (with optional client certificates) and to HTTPS replicas."""

from __future__ import annotations

import ssl
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import trustme

from tests.servers import Process, free_port, gateway_config, run_gateway

MODEL = "sim-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_files(module_tmp: Path, ca: trustme.CA) -> dict[str, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {
        "certfile": module_tmp / "server.pem",
        "keyfile": module_tmp / "server.key",
        "ca": module_tmp / "ca.pem",
    }
    cert.cert_chain_pems[0].write_to_path(files["certfile"])
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(files["certfile"], append=True)
    cert.private_key_pem.write_to_path(files["keyfile"])
    ca.cert_pem.write_to_path(files["ca"])
    return files


def https_config(sim: Process, files: dict[str, Path], **tls: object) -> dict[str, object]:
    config = gateway_config(free_port(), {MODEL: [sim.url]})
    listen = config["listen"]
    assert isinstance(listen, dict)
    listen["tls"] = {"certfile": str(files["certfile"]), "keyfile": str(files["keyfile"]), **tls}
    return config


@pytest.fixture(scope="module")
def https_gateway(
    module_tmp: Path, sim: Process, server_files: dict[str, Path]
) -> Iterator[Process]:
    with run_gateway(module_tmp, https_config(sim, server_files)) as process:
        yield process


def https_url(gateway: Process) -> str:
    return f"https://127.0.0.1:{gateway.port}"


def test_https_with_trusted_ca(https_gateway: Process, server_files: dict[str, Path]) -> None:
    context = ssl.create_default_context(cafile=str(server_files["ca"]))
    with httpx.Client(verify=context, headers=https_gateway.auth) as client:
        response = client.post(f"{https_url(https_gateway)}/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 3


def test_openai_sdk_over_https(https_gateway: Process, server_files: dict[str, Path]) -> None:
    context = ssl.create_default_context(cafile=str(server_files["ca"]))
    with openai.OpenAI(
        base_url=f"{https_url(https_gateway)}/v1",
        api_key=https_gateway.api_key,
        http_client=httpx.Client(verify=context),
        max_retries=0,
    ) as client:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
        )
        assert sum(1 for chunk in stream if chunk.choices and chunk.choices[0].delta.content) == 4


def test_untrusted_certificate_is_refused(https_gateway: Process) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{https_url(https_gateway)}/v1/models")


def test_old_tls_versions_are_refused(
    https_gateway: Process, server_files: dict[str, Path]
) -> None:
    context = ssl.create_default_context(cafile=str(server_files["ca"]))
    with warnings.catch_warnings():
        # Offering TLS 1.1 is deprecated, which is exactly what this client must do.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    # At OpenSSL's default security level the client would refuse TLS 1.1 by itself; at 0
    # it offers it, and it is the gateway that ends the handshake (an alert, or under
    # uvloop, which does not flush it, an end of file).
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(httpx.ConnectError, match=r"PROTOCOL_VERSION|UNEXPECTED_EOF"):
        httpx.get(f"{https_url(https_gateway)}/v1/models", verify=context)


@pytest.fixture(scope="module")
def mtls_gateway(
    module_tmp: Path, sim: Process, server_files: dict[str, Path], ca: trustme.CA
) -> Iterator[Process]:
    config = https_config(sim, server_files, client_ca=str(server_files["ca"]))
    with run_gateway(module_tmp, config) as process:
        yield process


def test_mtls_requires_a_client_certificate(
    mtls_gateway: Process, server_files: dict[str, Path], ca: trustme.CA
) -> None:
    url = f"{https_url(mtls_gateway)}/v1/models"
    without = ssl.create_default_context(cafile=str(server_files["ca"]))
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.get(url, verify=without)

    with_cert = ssl.create_default_context(cafile=str(server_files["ca"]))
    ca.issue_cert("client@example.com").configure_cert(with_cert)
    response = httpx.get(url, verify=with_cert, headers=mtls_gateway.auth)
    assert response.status_code == 200
    assert response.json()["data"][0]["id"] == MODEL


def test_mtls_refuses_a_certificate_from_another_ca(
    mtls_gateway: Process, server_files: dict[str, Path]
) -> None:
    context = ssl.create_default_context(cafile=str(server_files["ca"]))
    trustme.CA().issue_cert("intruder@example.com").configure_cert(context)
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.get(f"{https_url(mtls_gateway)}/v1/models", verify=context)


def upstream_https_config(https_gateway: Process, **upstream_tls: object) -> dict[str, object]:
    """A second gateway whose replica is the HTTPS gateway: a real TLS upstream."""
    config = gateway_config(free_port(), {}, upstream_tls=upstream_tls)
    replica = {"url": https_url(https_gateway), "api_key": https_gateway.api_key}
    config["models"] = [{"name": MODEL, "replicas": [replica]}]
    return config


def test_https_upstream_with_ca_bundle(
    module_tmp: Path, https_gateway: Process, server_files: dict[str, Path]
) -> None:
    config = upstream_https_config(https_gateway, ca_bundle=str(server_files["ca"]))
    with run_gateway(module_tmp, config) as front:
        response = httpx.post(f"{front.url}/v1/chat/completions", json=CHAT, headers=front.auth)
    assert response.status_code == 200
    assert response.json()["choices"][0]["finish_reason"] == "length"


def test_https_upstream_without_trust_is_502(module_tmp: Path, https_gateway: Process) -> None:
    with run_gateway(module_tmp, upstream_https_config(https_gateway)) as front:
        response = httpx.post(f"{front.url}/v1/chat/completions", json=CHAT, headers=front.auth)
        request_id = response.headers["x-request-id"]
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    # The client is told what happened and its request id; the log says why, and where.
    assert request_id in message and "TLS" not in message
    assert f"TLS handshake failed (request {request_id})" in front.log()


def test_check_command_over_https(https_gateway: Process, server_files: dict[str, Path]) -> None:
    url = https_url(https_gateway)
    command = [sys.executable, "-m", "gateway", "check", "--url", url, "--test", "health"]
    command += ["--api-key", str(https_gateway.api_key)]
    trusted = subprocess.run(
        [*command, "--cacert", str(server_files["ca"])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert trusted.returncode == 0, trusted.stdout
    untrusted = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert untrusted.returncode == 1
    assert "TLS certificate verify failed" in untrusted.stdout
