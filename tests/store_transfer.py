"""Helpers for the store migration and backup tests: configs, the CLI, requests, usage."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.servers import TEST_PEPPER, Process, gateway_config, write_config

ADMIN = "admin-token-for-the-store-migration-tests-0123"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
CLI_TIMEOUT_S = 60
# Tenant limits live in the settings, not the store: both sides carry the same ones.
TENANTS = {"acme": {"requests_per_minute": 1000}}


def sqlite_config(port: int, sim: Process, path: Path, pepper: str = TEST_PEPPER) -> dict[str, Any]:
    config = gateway_config(port, {"sim-model": [sim.url]})
    config["auth"] = {"pepper": pepper, "key_store": {"sqlite_path": str(path)}}
    config["admin"] = {"tokens": [ADMIN]}
    config["limits"] = {"tenants": TENANTS}
    return config


def redis_config(port: int, sim: Process, url: str, pepper: str = TEST_PEPPER) -> dict[str, Any]:
    config = gateway_config(port, {"sim-model": [sim.url]})
    config["auth"] = {"pepper": pepper, "key_store": {"backend": "redis", "redis_url": url}}
    config["admin"] = {"tokens": [ADMIN]}
    config["limits"] = {"backend": "redis", "tenants": TENANTS}
    return config


def keys_cli(
    tmp_path: Path, action: str, file: Path, config: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    """`vllm-gateway keys ACTION FILE --config <CONFIG written to a file>`, as a process."""
    path = write_config(tmp_path, config)
    return subprocess.run(
        [sys.executable, "-m", "gateway", "keys", action, str(file), "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def chat(gateway: Process, token: str) -> int:
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{gateway.url}/v1/chat/completions"
    return httpx.post(url, json=body, headers=headers, timeout=30).status_code


def admin(gateway: Process, method: str, path: str, body: object = None) -> Any:
    response = httpx.request(
        method, f"{gateway.url}/admin/v1/{path}", json=body, headers=ADMIN_HEADERS, timeout=10
    )
    assert response.status_code < 300, response.text
    return response.json()


def usage(gateway: Process, owner: str) -> dict[str, Any]:
    """`keys/<id>` or `tenants/<name>`: its usage per model and in total."""
    data = admin(gateway, "GET", f"{owner}/usage")
    return {"models": data["models"], "total": data["total"]}


def wait_for_requests(gateway: Process, owner: str, requests: int, within_s: float = 15) -> None:
    """Until the usage store counts REQUESTS for OWNER (the recorder writes every second)."""
    deadline = time.monotonic() + within_s
    while usage(gateway, owner)["total"]["requests"] < requests:
        assert time.monotonic() < deadline, usage(gateway, owner)
        time.sleep(0.2)


def refused_within(gateway: Process, token: str, within_s: float = 5) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if chat(gateway, token) == 401:
            return True
        time.sleep(0.1)
    return False
