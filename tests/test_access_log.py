"""One access-log line per request, with ids and outcome, never a credential."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.servers import Process, free_port, gateway_config, run_gateway

REPLICA_SECRET = "replica-secret-that-must-not-leak"


def access_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "gateway.access" in line]


def wait_for_lines(process: Process, count: int) -> list[str]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = access_lines(process.log())
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    return access_lines(process.log())


def test_json_access_log(tmp_path: Path, sim: Process) -> None:
    config = gateway_config(free_port(), {})
    config["models"] = [
        {"name": "sim-model", "replicas": [{"url": sim.url, "api_key": REPLICA_SECRET}]}
    ]
    with run_gateway(tmp_path, config) as gateway:
        secret = str(gateway.api_key)
        headers = {**gateway.auth, "X-Request-Id": "log-check-1"}
        body = {"model": "sim-model", "prompt": "hi", "max_tokens": 3, "stream": True}
        streamed = httpx.post(f"{gateway.url}/v1/completions", json=body, headers=headers)
        missing = httpx.post(
            f"{gateway.url}/v1/completions", json={"model": "nope"}, headers=gateway.auth
        )
        lines = wait_for_lines(gateway, 2)
        log = gateway.log()
    assert streamed.status_code == 200
    assert missing.status_code == 404
    first, second = (json.loads(line) for line in lines[:2])
    # The client's id is logged beside the gateway's own, which the replica got.
    assert first["client_request_id"] == "log-check-1"
    assert len(first["request_id"]) == 32 and first["request_id"] != "log-check-1"
    assert first["status"] == 200
    assert first["model"] == "sim-model"
    assert first["replica"] == sim.url
    assert first["bytes"] == len(streamed.content)
    assert first["client_disconnected"] is False
    # The stream's usage, which the gateway asked for and kept from the client.
    assert first["completion_tokens"] == 3 and first["prompt_tokens"] > 0
    assert b'"usage"' not in streamed.content
    assert second["status"] == 404
    assert second["prompt_tokens"] is None
    assert second["request_id"] == missing.headers["x-request-id"]
    assert first["principal"] == secret.split("_")[1]  # the key's public id, never the secret
    assert first["tenant"] == "tests"
    assert secret not in log
    assert secret.split("_")[2] not in log
    assert REPLICA_SECRET not in log


@pytest.mark.parametrize("level", ["info", "warning"])
def test_text_access_log_and_level(tmp_path: Path, sim: Process, level: str) -> None:
    config = gateway_config(
        free_port(), {"sim-model": [sim.url]}, log={"format": "text", "level": level}
    )
    with run_gateway(tmp_path, config) as gateway:
        httpx.get(f"{gateway.url}/v1/models", headers={"X-Request-Id": "text-log", **gateway.auth})
        lines = wait_for_lines(gateway, 1) if level == "info" else []
    log = gateway.log()  # read after the gateway stopped and flushed everything
    if level == "info":
        assert len(lines) == 1
        assert "INFO gateway.access: request request_id=" in lines[0]
        assert " client_request_id=text-log " in lines[0]
        assert "status=200" in lines[0]
    else:
        assert access_lines(log) == []
