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


def test_embedded_default_serves_and_its_curl_line_works(tmp_path: Path) -> None:
    port = free_port()
    env = {"VGW_LISTEN__PORT": str(port)}
    with run_command(["serve"], port, tmp_path / "serve.log", env) as gateway:
        curl_line = wait_for_line(gateway, "curl ")
        assert "SIMULATOR" in gateway.log()
        result = subprocess.run(
            shlex.split(curl_line), capture_output=True, text=True, timeout=30, check=True
        )
        answer = httpx.Response(200, content=result.stdout).json()
        assert answer["choices"][0]["message"]["content"]
        assert answer["model"] == "sim-model"

        passed = check(gateway.url, "--test", "all")
        assert passed.returncode == 0, passed.stdout + passed.stderr
        assert passed.stdout.count("PASS") == 3

    failed = check(gateway.url, "--test", "all")
    assert failed.returncode == 1
    assert "FAIL health: cannot connect" in failed.stdout
    # The embedded simulator stops with the gateway.
    found = re.search(r"SIMULATOR at (http://127\.0\.0\.1:\d+)", gateway.log())
    assert found is not None
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{found.group(1)}/health", timeout=2)
