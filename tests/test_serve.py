"""`make run`'s path: the embedded default, its printed curl line, and `check` against it."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.servers import Process, free_port, run_command

BANNER_TIMEOUT_S = 30


def wait_for_line(process: Process, prefix: str) -> str:
    deadline = time.monotonic() + BANNER_TIMEOUT_S
    while time.monotonic() < deadline:
        for line in process.log().splitlines():
            if line.strip().startswith(prefix):
                return line.strip()
        time.sleep(0.1)
    raise AssertionError(f"no line starting with {prefix!r} in:\n{process.log()}")


def check(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--url", url, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def demo_key_line(log: str) -> str | None:
    found = re.search(r"Demo API key \(also in [^)]*\): (\S+)", log)
    return found.group(1) if found else None


def test_embedded_default_serves_and_its_curl_line_works(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    env = {"VGW_LISTEN__PORT": str(port), "VGW_AUTH__KEY_STORE__SQLITE_PATH": f"{data}/keys.db"}
    with run_command(["serve"], port, tmp_path / "serve.log", env) as gateway:
        curl_line = wait_for_line(gateway, "curl ")
        assert "SIMULATOR" in gateway.log()
        demo_key = demo_key_line(gateway.log())
        assert demo_key is not None and demo_key.startswith("vgw_")
        assert (data / "demo-key").read_text().strip() == demo_key
        assert oct((data / "admin-token").stat().st_mode & 0o777) == "0o600"
        result = subprocess.run(
            shlex.split(curl_line), capture_output=True, text=True, timeout=30, check=True
        )
        answer = httpx.Response(200, content=result.stdout).json()
        assert answer["choices"][0]["message"]["content"]
        assert answer["model"] == "sim-model"
        refused = httpx.get(f"{gateway.url}/v1/models")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "missing_api_key"

        passed = check(gateway.url, "--test", "all", "--api-key", demo_key)
        assert passed.returncode == 0, passed.stdout + passed.stderr
        assert passed.stdout.count("PASS") == 3

    failed = check(gateway.url, "--test", "all", "--api-key", demo_key)
    assert failed.returncode == 1
    assert "FAIL health: cannot connect" in failed.stdout
    # The embedded simulator stops with the gateway.
    found = re.search(r"SIMULATOR at (http://127\.0\.0\.1:\d+)", gateway.log())
    assert found is not None
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{found.group(1)}/health", timeout=2)

    # A second start keeps the key store and secrets, shows no secret, and its curl still works.
    with run_command(["serve"], port, tmp_path / "serve2.log", env) as again:
        curl_line = wait_for_line(again, "curl ")
        assert demo_key_line(again.log()) is None
        assert demo_key not in again.log()
        result = subprocess.run(
            ["bash", "-c", curl_line], capture_output=True, text=True, timeout=30, check=True
        )
        assert httpx.Response(200, content=result.stdout).json()["model"] == "sim-model"
