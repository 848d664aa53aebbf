"""Every file the embedded default writes (keys, usage, audit, tokens, the pepper) is 0600 in a
0700 directory, under a permissive umask; wider modes left by anyone are tightened."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import Process, free_port, run_command

SECRET_FILES = {"keys.db", "keys.db-wal", "keys.db-shm", "pepper", "admin-token", "demo-key"}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes(directory: Path) -> dict[str, int]:
    return {path.name: mode(path) for path in directory.iterdir()}


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """The common default: files 0644 and directories 0755 unless the gateway says otherwise."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def wait_for_banner(gateway: Process) -> None:
    deadline = time.monotonic() + 30
    while "curl " not in gateway.log():
        assert time.monotonic() < deadline, gateway.log()
        time.sleep(0.1)


def use(gateway: Process, data: Path) -> None:
    """A completion (a usage row) and an admin write (an audit row)."""
    demo = {"Authorization": f"Bearer {(data / 'demo-key').read_text().strip()}"}
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=demo, timeout=30)
    assert answer.status_code == 200, answer.text
    admin = {"Authorization": f"Bearer {(data / 'admin-token').read_text().strip()}"}
    created = httpx.post(
        f"{gateway.url}/admin/v1/keys", json={"tenant": "t", "name": "n"}, headers=admin
    )
    assert created.status_code == 201, created.text


@pytest.mark.usefixtures("permissive_umask")
def test_the_embedded_default_keeps_its_files_private(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    env = {"VGW_LISTEN__PORT": str(port), "VGW_AUTH__KEY_STORE__SQLITE_PATH": f"{data}/keys.db"}
    with run_command(["serve"], port, tmp_path / "serve.log", env) as gateway:
        wait_for_banner(gateway)
        use(gateway, data)
        time.sleep(1.5)  # the usage recorder writes in the background
        running = modes(data)
    stopped = modes(data)
    assert mode(data) == 0o700
    assert set(running) >= SECRET_FILES, running
    assert {name: 0o600 for name in running} == running
    assert {name: 0o600 for name in stopped} == stopped

    # Someone widened them (a copy, a restore from backup): the next start tightens them.
    for name in ("keys.db", "pepper", "admin-token", "demo-key"):
        (data / name).chmod(0o644)
    data.chmod(0o755)  # an existing directory is the operator's: left as it is
    with run_command(["serve"], port, tmp_path / "serve2.log", env) as again:
        wait_for_banner(again)
        use(again, data)
        restarted = modes(data)
        log = again.log()
    assert {name: 0o600 for name in restarted} == restarted
    assert mode(data) == 0o755
    assert "accessible to other users" in log and "admin-token" in log
    for name in ("pepper", "admin-token"):
        assert (data / name).read_text().strip() not in log
