"""Keys managed through real gateways' admin API: SQLite across restarts, Redis across replicas."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import httpx
import jwt
import openai
import pytest
import trustme

from tests.servers import Process, RedisServer, free_port, gateway_config, run_gateway

ADMIN_TOKEN = "admin-token-for-tests-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PEPPER = "pepper-shared-by-the-replicas-0123456789"


def admin_config(sim: Process, key_store: dict[str, object]) -> dict[str, object]:
    config = gateway_config(free_port(), {"sim-model": [sim.url]})
    config["auth"] = {"pepper": PEPPER, "key_store": key_store}
    config["admin"] = {"tokens": [ADMIN_TOKEN]}
    return config


def create_key(gateway: Process, **fields: object) -> dict[str, object]:
    body = {"tenant": "acme", "name": "ci", **fields}
    response = httpx.post(f"{gateway.url}/admin/v1/keys", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created


def models_get(gateway: Process, key: str) -> httpx.Response:
    return httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {key}"})


def models_status(gateway: Process, key: str) -> int:
    return models_get(gateway, key).status_code


def test_sqlite_keys_survive_a_gateway_restart(tmp_path: Path, sim: Process) -> None:
    config = admin_config(sim, {"sqlite_path": str(tmp_path / "keys.db")})
    with run_gateway(tmp_path, config) as gateway:
        created = create_key(gateway)
        key = str(created["key"])
        assert models_status(gateway, key) == 200
        log = gateway.log()
    with run_gateway(tmp_path, config) as again:
        with openai.OpenAI(base_url=f"{again.url}/v1", api_key=key, max_retries=0) as client:
            assert [model.id for model in client.models.list()] == ["sim-model"]
        listed = httpx.get(f"{again.url}/admin/v1/keys", headers=ADMIN).json()
        log += again.log()
    assert [item["id"] for item in listed["data"]] == [created["id"]]
    assert "key" not in listed["data"][0]
    assert key not in log and ADMIN_TOKEN not in log


def test_revoked_key_gets_authentication_error(tmp_path: Path, sim: Process) -> None:
    config = admin_config(sim, {"sqlite_path": str(tmp_path / "keys.db")})
    with run_gateway(tmp_path, config) as gateway:
        created = create_key(gateway)
        key = str(created["key"])
        with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0) as client:
            client.models.list()  # cached by the gateway now
            url = f"{gateway.url}/admin/v1/keys/{created['id']}/revoke"
            assert httpx.post(url, headers=ADMIN).status_code == 200
            with pytest.raises(openai.AuthenticationError):
                client.models.list()


def test_two_gateways_share_keys_through_redis(
    tmp_path: Path, sim: Process, redis_server: RedisServer
) -> None:
    store = {"backend": "redis", "redis_url": redis_server.url}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    with (
        run_gateway(tmp_path / "a", admin_config(sim, store)) as a,
        run_gateway(tmp_path / "b", admin_config(sim, store)) as b,
    ):
        created = create_key(a)
        key = str(created["key"])
        assert models_status(b, key) == 200  # created on A, usable on B at once
        assert httpx.post(f"{a.url}/admin/v1/keys/{created['id']}/revoke", headers=ADMIN).is_success
        revoked_at = time.monotonic()
        while (refused := models_get(b, key)).status_code == 200:
            assert time.monotonic() - revoked_at <= 1.0, "B still accepts a key revoked on A"
            time.sleep(0.02)
        elapsed = time.monotonic() - revoked_at
        again = models_get(b, key)
        logs = a.log() + b.log()
    assert elapsed <= 1.0
    # Refused as a revoked key (OpenAI's AuthenticationError), not as an outage.
    for answer in (refused, again):
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"] == {
            "message": "This API key has been revoked.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    assert key not in logs


def test_a_jwt_with_the_admin_claim_manages_keys(tmp_path: Path, sim: Process) -> None:
    secret = "an-hs256-secret-for-admin-tests-0123456789abcdef"
    config = admin_config(sim, {"sqlite_path": str(tmp_path / "keys.db")})
    config["auth"]["jwt_issuers"] = [  # type: ignore[index]
        {"issuer": "https://idp.test/", "algorithms": ["HS256"], "hs_secret": secret}
    ]
    config["admin"] = {"tokens": [ADMIN_TOKEN], "jwt_claim": "vgw_admin"}
    claims = {"iss": "https://idp.test/", "sub": "ops-alice", "exp": int(time.time()) + 300}
    admin_jwt = jwt.encode({**claims, "vgw_admin": True}, secret, algorithm="HS256")
    user_jwt = jwt.encode(claims, secret, algorithm="HS256")
    with run_gateway(tmp_path, config) as gateway:
        url = f"{gateway.url}/admin/v1/keys"
        body = {"tenant": "acme", "name": "via-jwt"}
        as_admin = httpx.post(url, json=body, headers={"Authorization": f"Bearer {admin_jwt}"})
        as_user = httpx.post(url, json=body, headers={"Authorization": f"Bearer {user_jwt}"})
        audit = httpx.get(f"{gateway.url}/admin/v1/audit", headers=ADMIN).json()
    assert as_admin.status_code == 201, as_admin.text
    assert as_user.status_code == 401
    assert audit["data"][0]["actor"] == "jwt:ops-alice"


def test_admin_api_on_its_own_tls_listener(tmp_path: Path, sim: Process) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "admin.pem", tmp_path / "admin.key"
    cert.cert_chain_pems[0].write_to_path(certfile)
    cert.private_key_pem.write_to_path(keyfile)
    admin_port = free_port()
    config = admin_config(sim, {"sqlite_path": str(tmp_path / "keys.db")})
    config["admin"] = {
        "tokens": [ADMIN_TOKEN],
        "listen": {
            "host": "127.0.0.1",
            "port": admin_port,
            "tls": {"certfile": str(certfile), "keyfile": str(keyfile)},
        },
    }
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with run_gateway(tmp_path, config) as gateway:
        admin_url = f"https://127.0.0.1:{admin_port}/admin/v1/keys"
        created = httpx.post(
            admin_url, json={"tenant": "acme", "name": "tls"}, headers=ADMIN, verify=context
        )
        on_client_listener = httpx.get(f"{gateway.url}/admin/v1/keys", headers=ADMIN)
        key = created.json()["key"]
        assert models_status(gateway, key) == 200
    assert created.status_code == 201
    assert on_client_listener.status_code == 404  # the admin API is not on the client listener
