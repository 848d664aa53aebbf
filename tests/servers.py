"""Real processes for the tests: the gateway and the simulator, each in its own process."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.keys.records import new_key
from gateway.keys.sqlite import SqliteKeyStore

STARTUP_TIMEOUT_S = 30.0


# Ports for the servers the tests start: below the kernel's ephemeral range, where
# outgoing connections take theirs, so a port chosen here is still free when its server
# binds it seconds later (a SkyPilot API server takes ~10 s to start), however many
# connections the tests open meanwhile; and each pytest-xdist worker draws from its own
# slice, so two workers never choose the same one.
PORTS_FROM = 10_000


def _port_slice() -> range:
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32_768
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    size = (ephemeral - PORTS_FROM) // max(workers, 1)
    start = PORTS_FROM + size * worker
    return range(start, start + size)


def free_port() -> int:
    """A port nothing listens on (see PORTS_FROM); the kernel's choice if none is found."""
    choices = _port_slice()
    for _ in range(50):
        port = random.choice(choices)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        found: int = sock.getsockname()[1]
        return found


@dataclass
class Process:
    """A running `vllm-gateway` subcommand and where its output goes."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    api_key: str | None = None
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        """The Authorization header of the key this gateway was started with."""
        assert self.api_key is not None, "this process has no API key"
        return {"Authorization": f"Bearer {self.api_key}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes], log_path: Path, host: str = "127.0.0.1"
) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open in {STARTUP_TIMEOUT_S}s:\n{log_path.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def run_command(
    args: Sequence[str],
    port: int,
    log_path: Path,
    env: dict[str, str] | None = None,
    *,
    python: str = sys.executable,
    host: str = "127.0.0.1",
) -> Iterator[Process]:
    """Run `PYTHON -m gateway ARGS`, wait until HOST:PORT accepts connections, stop it after.

    PYTHON is this test's interpreter unless given: another venv's runs the gateway
    as installed there.
    """
    full_env = {**os.environ, **(env or {})}
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [python, "-m", "gateway", *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
        try:
            wait_for_port(port, proc, log_path, host)
            yield Process(proc, port, log_path, host=host)
        finally:
            stop(proc)


@contextmanager
def run_simulator(
    tmp_path: Path,
    *extra: str,
    model: str = "sim-model",
    port: int | None = None,
    host: str = "127.0.0.1",
) -> Iterator[Process]:
    """A simulator serving MODEL on HOST:PORT (a free port by default: give it to restart
    one). HOST may be any loopback address: several simulators can share one port."""
    port = port or free_port()
    log_path = tmp_path / f"sim-{host}-{port}.log"
    args = ["simulate", "--host", host, "--port", str(port), "--model", model, *extra]
    with run_command(args, port, log_path, host=host) as process:
        httpx.get(f"{process.url}/health", timeout=5).raise_for_status()
        yield process


def write_config(tmp_path: Path, config: dict[str, object]) -> Path:
    path = tmp_path / f"gateway-{len(list(tmp_path.glob('gateway-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def gateway_config(port: int, models: dict[str, list[str]], **extra: object) -> dict[str, object]:
    """A gateway config: `models` maps each model name to its replicas' URLs."""
    config: dict[str, object] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "log": {"level": "info", "format": "json"},
        "models": [
            {"name": name, "replicas": [{"url": url} for url in urls]}
            for name, urls in models.items()
        ],
    }
    config.update(extra)
    return config


TEST_PEPPER = "pepper-for-tests-only-0123456789abcdef"


def create_key(config: dict[str, object], **fields: Any) -> str:
    """Store a new key in the config's SQLite key store; return the key string."""
    auth = config["auth"]
    assert isinstance(auth, dict)
    path = Path(auth["key_store"]["sqlite_path"])
    key, record = new_key(
        str(auth["pepper"]).encode(),
        tenant=fields.pop("tenant", "tests"),
        name=fields.pop("name", "test key"),
        created_at=datetime.now(UTC),
        **fields,
    )

    async def store() -> None:
        keys = await SqliteKeyStore.open(path)
        try:
            await keys.create(record)
        finally:
            await keys.close()

    asyncio.run(store())
    return key.token


@contextmanager
def run_gateway(
    tmp_path: Path,
    config: dict[str, object],
    env: dict[str, str] | None = None,
    *,
    python: str = sys.executable,
) -> Iterator[Process]:
    """Run `vllm-gateway serve --config FILE`; the config must name its listen port.

    Without an `auth` section, the gateway gets a SQLite key store in `tmp_path`
    holding one key for every model: `process.api_key`.
    """
    listen = config["listen"]
    assert isinstance(listen, dict)
    port = int(listen["port"])
    api_key = None
    if "auth" not in config:
        sqlite_path = tmp_path / f"keys-{port}.db"
        config["auth"] = {"pepper": TEST_PEPPER, "key_store": {"sqlite_path": str(sqlite_path)}}
        api_key = create_key(config)
    path = write_config(tmp_path, config)
    log_path = tmp_path / f"gateway-{port}.log"
    args = ["serve", "--config", str(path)]
    with run_command(args, port, log_path, env, python=python) as process:
        process.api_key = api_key
        yield process


class RedisServer:
    """A real redis-server on a free port, its AOF in `directory`; restartable in place."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: run `bash scripts/install-system-deps.sh`"
            )
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log_path = self.directory / "redis.log"
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir"]
        args += [str(self.directory), "--appendonly", "yes", "--save", "", "--logfile", ""]
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc, log_path)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)  # SIGTERM: Redis flushes the AOF and exits
            self.proc = None

    def files(self) -> list[Path]:
        return [path for path in self.directory.rglob("*") if path.is_file()]


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of NAME's samples with LABELS in the Prometheus text at URL/metrics."""
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
