"""Usage recorded by a real gateway survives its restart, in SQLite and in Redis."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.servers import Process, RedisServer, free_port, gateway_config, run_gateway

ADMIN_TOKEN = "admin-token-for-usage-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PEPPER = "pepper-for-usage-tests-0123456789abcdef"
MODEL = "sim-model"


def usage(gateway: Process, path: str) -> dict[str, dict[str, int]]:
    response = httpx.get(f"{gateway.url}/admin/v1/{path}/usage", headers=ADMIN)
    assert response.status_code == 200, response.text
    models: dict[str, dict[str, int]] = response.json()["models"]
    return models


def send(gateway: Process, key: str) -> tuple[int, int]:
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0) as client:
        answer = client.completions.create(model=MODEL, prompt="Keep count", max_tokens=4)
    assert answer.usage is not None
    return answer.usage.prompt_tokens, answer.usage.completion_tokens


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_usage_survives_a_restart(tmp_path: Path, sim: Process, backend: str) -> None:
    redis = RedisServer(tmp_path)
    config = gateway_config(free_port(), {MODEL: [sim.url]})
    config["admin"] = {"tokens": [ADMIN_TOKEN]}
    if backend == "redis":
        redis.start()
        config["auth"] = {
            "pepper": PEPPER,
            "key_store": {"backend": "redis", "redis_url": redis.url},
        }
    else:
        config["auth"] = {"pepper": PEPPER, "key_store": {"sqlite_path": str(tmp_path / "keys.db")}}
    try:
        with run_gateway(tmp_path, config) as gateway:
            body = {"tenant": "acme", "name": "usage"}
            created = httpx.post(f"{gateway.url}/admin/v1/keys", json=body, headers=ADMIN).json()
            key, key_id = created["key"], created["id"]
            sent = [send(gateway, key) for _ in range(3)]
        # Stopped (SIGTERM): what was pending was written on the way out.
        if backend == "redis":
            redis.stop()  # and Redis restarts from its AOF
            redis.start()
        with run_gateway(tmp_path, config) as gateway:
            expected = {
                "requests": 3,
                "prompt_tokens": sum(p for p, _ in sent),
                "completion_tokens": sum(c for _, c in sent),
            }
            got = usage(gateway, f"keys/{key_id}")[MODEL]
            assert {name: got[name] for name in expected} == expected
            assert usage(gateway, "tenants/acme")[MODEL]["requests"] == 3
            # And it keeps counting after the restart.
            send(gateway, key)
            deadline = time.monotonic() + 10
            while usage(gateway, f"keys/{key_id}")[MODEL]["requests"] < 4:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        redis.stop()
