"""Every proxied request is authenticated: API keys and JWTs, 401s and 403s, OpenAI-shaped."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import openai
import pytest

from tests.servers import (
    Process,
    create_key,
    free_port,
    gateway_config,
    run_gateway,
    run_simulator,
)

HS_SECRET = "an-hs256-secret-for-tests-only-0123456789abcdef"
ISSUER = "https://idp.test/"


@pytest.fixture(scope="module")
def two_model_gateway(module_tmp: Path) -> Iterator[tuple[Process, str]]:
    """A gateway serving `open` and `secret` (a simulator each), and a key for `open` only."""
    with (
        run_simulator(module_tmp, model="open") as open_sim,
        run_simulator(module_tmp, model="secret") as secret_sim,
    ):
        yield from serve_two_models(module_tmp, open_sim, secret_sim)


def serve_two_models(
    module_tmp: Path, open_sim: Process, secret_sim: Process
) -> Iterator[tuple[Process, str]]:
    config = gateway_config(free_port(), {"open": [open_sim.url], "secret": [secret_sim.url]})
    config["auth"] = {
        "pepper": "pepper-for-the-auth-tests-0123456789",
        "key_store": {"sqlite_path": str(module_tmp / "auth-keys.db")},
        "jwt_issuers": [
            {
                "issuer": ISSUER,
                "algorithms": ["HS256"],
                "hs_secret": HS_SECRET,
                "default_tenant": "idp-users",
            }
        ],
    }
    limited = create_key(config, models=frozenset({"open"}), name="open only")
    with run_gateway(module_tmp, config) as gateway:
        yield gateway, limited


def sdk(gateway: Process, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def test_a_key_limited_to_one_model(two_model_gateway: tuple[Process, str]) -> None:
    gateway, limited = two_model_gateway
    with sdk(gateway, limited) as client:
        assert [model.id for model in client.models.list()] == ["open"]
        answer = client.completions.create(model="open", prompt="hi", max_tokens=2)
        assert answer.usage is not None
        # A model the key may not use is as missing as one that does not exist.
        with pytest.raises(openai.NotFoundError) as denied:
            client.completions.create(model="secret", prompt="hi", max_tokens=2)
        assert denied.value.status_code == 404
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("secret")


def test_unknown_and_tampered_keys_are_401(two_model_gateway: tuple[Process, str]) -> None:
    gateway, limited = two_model_gateway
    tampered = limited[:-1] + ("a" if limited[-1] != "a" else "b")
    for key in (tampered, "vgw_" + "a" * 16 + "_" + "b" * 52, "sk-not-ours"):
        with sdk(gateway, key) as client, pytest.raises(openai.AuthenticationError) as refused:
            client.models.list()
        body = refused.value.body
        assert isinstance(body, dict)
        assert set(body) == {"message", "type", "param", "code"}
        assert key not in str(body)


def test_a_jwt_from_a_configured_issuer(two_model_gateway: tuple[Process, str]) -> None:
    gateway, _ = two_model_gateway
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "alice", "exp": now + 300, "models": ["secret"]}
    token = jwt.encode(claims, HS_SECRET, algorithm="HS256")
    with sdk(gateway, token) as client:
        assert [model.id for model in client.models.list()] == ["secret"]
    expired = jwt.encode({**claims, "exp": now - 300}, HS_SECRET, algorithm="HS256")
    with sdk(gateway, expired) as client, pytest.raises(openai.AuthenticationError):
        client.models.list()


def raw_get(port: int, authorization: bytes | None) -> tuple[int, bytes]:
    header = b"Authorization: " + authorization + b"\r\n" if authorization is not None else b""
    request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + header + b"Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        b"",
        b"vgw_no_scheme",
        b"Basic dXNlcjpwYXNz",
        b"Bearer",
        b"Bearer " + b"k" * 10_000,
        "Bearer clé-non-ascii".encode(),
        b"Bearer a.b.c",
    ],
)
def test_malformed_authorization_is_401_never_500(
    two_model_gateway: tuple[Process, str], authorization: bytes | None
) -> None:
    gateway, _ = two_model_gateway
    status, body = raw_get(gateway.port, authorization)
    assert status == 401
    error = httpx.Response(200, content=body).json()["error"]
    assert error["type"] == "invalid_request_error"
