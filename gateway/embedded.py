"""The embedded default: with no upstream configured, a simulator stands in for vLLM.

It runs as a child process, so it never shares the gateway's CPU time or event
loop, and it is announced loudly: nobody should mistake it for a real model.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from gateway.keys.records import KeyRecord, new_key
from gateway.keys.sqlite import SqliteKeyStore
from gateway.private_files import private_directory, tighten, write_private
from gateway.settings import ModelSettings, ReplicaSettings

logger = logging.getLogger("gateway.embedded")

SIM_MODEL = "sim-model"
STARTUP_TIMEOUT_S = 30.0
# Delays like a small real model's, so a streamed demo answer visibly streams.
SIM_DELAYS = ["--ttft-ms", "150", "--itl-ms", "25"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the embedded simulator exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the embedded simulator did not become healthy")


@contextmanager
def embedded_simulator() -> Iterator[ModelSettings]:
    """Start the simulator on a free loopback port; yield the model that points at it."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "gateway", "simulate", "--port", str(port)]
    proc = subprocess.Popen([*command, "--model", SIM_MODEL, *SIM_DELAYS])
    try:
        _wait_healthy(url, proc)
        logger.warning(
            "no upstream is configured: model '%s' is served by the vLLM SIMULATOR at %s, "
            "not by a real model; configure `models:` to put vLLM replicas behind the gateway",
            SIM_MODEL,
            url,
        )
        yield ModelSettings(name=SIM_MODEL, replicas=[ReplicaSettings(url=url)])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass(frozen=True)
class EmbeddedCredentials:
    """What `make run` needs to be usable at once: a pepper, an admin token, a demo key."""

    pepper: str
    admin_token: str
    demo_key_file: Path
    demo_key: str | None  # only on the first start: it is shown once


def _read_or_create(path: Path, make: Callable[[], str]) -> tuple[str, bool]:
    if path.exists():
        tighten(path)
        return path.read_text().strip(), False
    value = make()
    write_private(path, value + "\n")
    return value, True


def embedded_credentials(key_db: Path) -> EmbeddedCredentials:
    """Create (first start) or read the embedded default's secrets, each in a 0600 file
    beside the SQLite key store, in a directory made 0700 if the gateway creates it."""
    data_dir = key_db.parent
    private_directory(data_dir)
    pepper, _ = _read_or_create(data_dir / "pepper", lambda: secrets.token_urlsafe(48))
    admin, _ = _read_or_create(data_dir / "admin-token", lambda: secrets.token_urlsafe(32))
    demo_file = data_dir / "demo-key"
    demo_key = None
    tighten(demo_file)
    if not demo_file.exists():
        key, record = new_key(
            pepper.encode(), tenant="demo", name="demo", created_at=datetime.now(UTC)
        )
        asyncio.run(_store_key(key_db, record))
        demo_key, _ = _read_or_create(demo_file, lambda: key.token)
    return EmbeddedCredentials(pepper, admin, demo_file, demo_key)


async def _store_key(path: Path, record: KeyRecord) -> None:
    store = await SqliteKeyStore.open(path)
    try:
        await store.create(record)
    finally:
        await store.close()
