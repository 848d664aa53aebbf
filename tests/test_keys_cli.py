"""`vllm-gateway keys`, run as a process against a real gateway and its admin API."""

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

from tests.servers import Process, free_port, gateway_config, run_gateway

ADMIN_TOKEN = "admin-token-for-the-keys-cli-tests-0123456789"
CLI_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def admin_gateway(module_tmp: Path, sim: Process) -> Iterator[Process]:
    config = gateway_config(free_port(), {"sim-model": [sim.url]})
    config["admin"] = {"tokens": [ADMIN_TOKEN]}
    with run_gateway(module_tmp, config) as process:
        yield process


def keys(
    gateway: Process | None, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `vllm-gateway keys ARGS`, with --url and --admin-token unless `gateway` is None."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_GATEWAY_")}
    flags = ["--url", gateway.url, "--admin-token", ADMIN_TOKEN] if gateway else []
    return subprocess.run(
        [sys.executable, "-m", "gateway", "keys", *args, *flags],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert ADMIN_TOKEN not in result.stdout + result.stderr
    return result.stdout


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def models_status(gateway: Process, key: str) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.get(f"{gateway.url}/v1/models", headers=headers, timeout=5).status_code


def wait_status(gateway: Process, key: str, expected: int) -> None:
    # The gateway caches keys briefly; a revocation takes effect within a second.
    deadline = time.monotonic() + 1.5
    while (status := models_status(gateway, key)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status == expected


def test_create_prints_key_once_and_revoke_shuts_it_out(admin_gateway: Process) -> None:
    out = ok(keys(admin_gateway, "create", "--tenant", "acme", "--name", "ci bot"))
    assert "store this key now; it will not be shown again" in out.lower()
    key_lines = [line for line in out.splitlines() if line.startswith("key: ")]
    assert len(key_lines) == 1
    key = key_lines[0].removeprefix("key: ")
    key_id = next(line.split()[-1] for line in out.splitlines() if line.startswith("id:"))
    assert models_status(admin_gateway, key) == 200

    table = ok(keys(admin_gateway, "list", "--tenant", "acme")).splitlines()
    assert table[0].split()[:4] == ["ID", "TENANT", "NAME", "STATUS"]
    row = next(line for line in table if line.startswith(key_id))
    assert "ci bot" in row and "active" in row and "never" in row

    assert f"Revoked key {key_id}" in ok(keys(admin_gateway, "revoke", key_id))
    wait_status(admin_gateway, key, 401)
    assert key not in ok(keys(admin_gateway, "get", key_id))
    table = ok(keys(admin_gateway, "list", "--tenant", "acme", "--limit", "1", "--all"))
    assert "revoked" in next(line for line in table.splitlines() if line.startswith(key_id))


def test_create_json_then_update_is_reflected(admin_gateway: Process) -> None:
    created = ok_json(
        keys(
            admin_gateway, "create", "--json", "--tenant", "globex", "--name", "n",
            "--models", "sim-model", "--rpm", "5", "--expires-in", "30d",
            "--metadata", "team=ml", "env=ci",
        )
    )  # fmt: skip
    assert created["key"] and created["models"] == ["sim-model"]
    assert created["limits"]["requests_per_minute"] == 5
    assert created["metadata"] == {"team": "ml", "env": "ci"}
    assert created["expires_at"] is not None
    assert models_status(admin_gateway, created["key"]) == 200

    key_id = created["id"]
    args = ["update", key_id, "--models", "other-model", "--tpm", "100", "--no-expiry"]
    assert "Updated key" in ok(keys(admin_gateway, *args))
    got = ok_json(keys(admin_gateway, "get", key_id, "--json"))
    assert got["models"] == ["other-model"]
    assert got["limits"]["requests_per_minute"] == 5  # kept: only --tpm was given
    assert got["limits"]["tokens_per_minute"] == 100
    assert got["expires_at"] is None
    assert "key" not in got

    two = ok_json(keys(admin_gateway, "list", "--tenant", "globex", "--json"))
    assert [k["id"] for k in two["data"]] == [key_id]


def test_model_limits_are_set_merged_and_shown(admin_gateway: Process) -> None:
    created = ok_json(
        keys(
            admin_gateway, "create", "--json", "--tenant", "umbrella", "--rpm", "50",
            "--model-limit", "sim-model:rpm=10", "--model-limit", "sim-model:tpm=5000",
            "--model-limit", "llama3:8b:concurrency=2",
        )
    )  # fmt: skip
    assert created["limits"]["requests_per_minute"] == 50
    assert created["limits"]["models"] == {
        "llama3:8b": {"requests_per_minute": None, "tokens_per_minute": None,
                      "concurrent_requests": 2},
        "sim-model": {"requests_per_minute": 10, "tokens_per_minute": 5000,
                      "concurrent_requests": None},
    }  # fmt: skip

    key_id = created["id"]
    args = ["--model-limit", "sim-model:rpm=0", "--model-limit", "llama3:8b:concurrency=none"]
    ok(keys(admin_gateway, "update", key_id, *args, "--model-limit", "other:TPM=7"))
    got = ok_json(keys(admin_gateway, "get", key_id, "--json"))["limits"]
    assert got["requests_per_minute"] == 50  # kept: no key-wide limit was given
    assert got["models"] == {
        "other": {"requests_per_minute": None, "tokens_per_minute": 7, "concurrent_requests": None},
        "sim-model": {"requests_per_minute": None, "tokens_per_minute": 5000,
                      "concurrent_requests": None},
    }  # fmt: skip
    details = ok(keys(admin_gateway, "get", key_id)).splitlines()
    shown = next(i for i, line in enumerate(details) if line.startswith("model limits:"))
    assert details[shown].endswith(" other: tpm 7")
    assert details[shown + 1].split() == ["sim-model:", "tpm", "5000"]


def test_rotate_with_env_settings(admin_gateway: Process) -> None:
    env = {"VLLM_GATEWAY_URL": admin_gateway.url, "VLLM_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
    created = ok_json(keys(None, "create", "--tenant", "initech", "--json", env=env))
    old = created["key"]
    assert models_status(admin_gateway, old) == 200

    rotated = keys(None, "rotate", created["id"], "--grace", "0s", env=env)
    out = ok(rotated)
    assert "old secret stops working now" in out
    new = next(line for line in out.splitlines() if line.startswith("key: ")).split()[-1]
    assert new != old
    wait_status(admin_gateway, old, 401)
    assert models_status(admin_gateway, new) == 200


def test_wrong_admin_token_is_an_api_error_without_the_token(admin_gateway: Process) -> None:
    wrong = "wrong-admin-token-that-must-never-be-printed"
    result = keys(None, "list", "--url", admin_gateway.url, "--admin-token", wrong)
    assert result.returncode == 1
    assert result.stderr.startswith("error: 401 ")
    assert len(result.stderr.splitlines()) == 1
    assert wrong not in result.stdout + result.stderr


def test_unknown_key_is_a_404(admin_gateway: Process) -> None:
    result = keys(admin_gateway, "get", "a" * 16)
    assert result.returncode == 1
    assert result.stderr.startswith("error: 404 ")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["list"], {"VLLM_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}, "no gateway URL"),
        (["get", "not-a-key-id", "--url", "http://127.0.0.1:1"], {}, "not a key id"),
        (["create", "--tenant", "t", "--model-limit", "m:rpm"], {}, "not MODEL:FIELD=VALUE"),
        (["update", "a" * 16, "--model-limit", "m=5"], {}, "not MODEL:FIELD=VALUE"),
        (["create", "--tenant", "t", "--model-limit", ":rpm=5"], {}, "not MODEL:FIELD=VALUE"),
        (["create", "--tenant", "t", "--model-limit", "m:max_tokens=5"], {}, "FIELD is one of"),
        (["create", "--tenant", "t", "--model-limit", "m:rpm=ten"], {}, "not a whole number"),
    ],
)
def test_usage_errors_exit_2(args: list[str], env: dict[str, str], message: str) -> None:
    result = keys(None, *args, env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert ADMIN_TOKEN not in result.stdout + result.stderr


def test_quotas_are_set_merged_and_cleared(admin_gateway: Process) -> None:
    created = ok_json(
        keys(
            admin_gateway, "create", "--json", "--tenant", "initech",
            "--quota", "tokens_per_day=100000", "--quota", "cost_per_month=25.5",
        )
    )  # fmt: skip
    quotas = created["limits"]["quotas"]
    assert (quotas["tokens_per_day"], quotas["cost_per_month"]) == (100000, 25.5)
    key_id = created["id"]
    args = ["--quota", "tokens_per_day=none", "--quota", "requests_per_month=7", "--rpm", "9"]
    ok(keys(admin_gateway, "update", key_id, *args))
    got = ok_json(keys(admin_gateway, "get", key_id, "--json"))["limits"]
    assert got["quotas"]["tokens_per_day"] is None
    assert (got["quotas"]["requests_per_month"], got["quotas"]["cost_per_month"]) == (7, 25.5)
    assert got["requests_per_minute"] == 9
    details = ok(keys(admin_gateway, "get", key_id)).splitlines()
    row = next(line for line in details if line.startswith("quotas:"))
    assert row.split(":", 1)[1].strip() == "requests_per_month 7, cost_per_month 25.5 USD"
    for bad in ("tokens_per_week=5", "tokens_per_day=-1", "cost_per_day=abc", "tokens_per_day"):
        refused = keys(admin_gateway, "create", "--tenant", "initech", "--quota", bad)
        assert refused.returncode == 2, bad
        assert "--quota" in refused.stderr
