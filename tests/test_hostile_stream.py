"""A client that stops reading: cut off after `timeouts.client_write`, never the replica's fault.

A raw socket with a tiny receive buffer asks for a long, fast stream and never
reads. The gateway's writes to it block; after the write timeout the request
ends, the replica's request is closed (the engine stops running it), the
key's one concurrency slot is free again, and the replica is not blamed.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import Process, free_port, gateway_config, metric, run_gateway, run_simulator
from tests.test_streaming import finished, wait_until_idle

MODEL = "sim-model"
ADMIN_TOKEN = "admin-token-for-hostile-tests-0123456789"
PROMPT = [{"role": "user", "content": "Tell me a long story"}]
# Far more than the socket buffers between the simulator and the client hold.
LONG = 200_000


@pytest.fixture(scope="module")
def sim(module_tmp: Path) -> Iterator[Process]:
    with run_simulator(module_tmp, "--max-model-len", str(LONG * 2)) as process:
        yield process


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, sim: Process) -> Iterator[Process]:
    # `idle` shorter than `client_write`: were the replica's idle timer running while the
    # gateway waits on the client, it would fire first and blame the replica.
    config = gateway_config(
        free_port(), {MODEL: [sim.url]}, timeouts={"idle": 1, "client_write": 3}
    )
    config["admin"] = {"tokens": [ADMIN_TOKEN]}
    with run_gateway(module_tmp, config) as process:
        yield process


def one_slot_key(gateway: Process) -> str:
    body = {"tenant": "acme", "name": "one slot", "limits": {"concurrent_requests": 1}}
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    response = httpx.post(f"{gateway.url}/admin/v1/keys", json=body, headers=headers)
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


def stalled_stream(gateway: Process, key: str) -> socket.socket:
    """A connection that asked for a long stream and will never read a byte of it."""
    body = json.dumps({"model": MODEL, "messages": PROMPT, "max_tokens": LONG, "stream": True})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gateway.port))
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    )
    sock.sendall(request.encode())
    return sock


def short_chat(gateway: Process, key: str) -> httpx.Response:
    body = {"model": MODEL, "messages": PROMPT, "max_tokens": 3}
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def upstream_errors(gateway: Process) -> float:
    return metric(gateway.url, "gateway_upstream_errors_total", model=MODEL)


def test_a_client_that_stops_reading_frees_its_slot_and_is_not_the_replicas_fault(
    gateway: Process, sim: Process
) -> None:
    key = one_slot_key(gateway)
    errors, done = upstream_errors(gateway), finished(sim)
    stalls = metric(gateway.url, "gateway_client_stalls_total", model=MODEL)
    sock = stalled_stream(gateway, key)
    try:
        time.sleep(0.5)
        # The stalled stream holds the key's one slot...
        assert short_chat(gateway, key).status_code == 429
        # ...until the write timeout ends it, with the socket still open.
        deadline = time.monotonic() + 60
        while (answer := short_chat(gateway, key)).status_code == 429:
            assert time.monotonic() < deadline, "the stalled stream kept its slot"
            time.sleep(0.25)
        assert answer.status_code == 200, answer.text
        assert metric(gateway.url, "gateway_client_stalls_total", model=MODEL) == stalls + 1
        # The replica's request was closed: the engine aborted the generation.
        assert wait_until_idle(sim, within_s=10) == 0
        assert finished(sim) == done + 1  # the short chat that got through; not the stalled one
        # Not blamed on the replica, which stays in use.
        assert upstream_errors(gateway) == errors
        assert metric(gateway.url, "gateway_replica_up", model=MODEL) == 1
        assert short_chat(gateway, key).status_code == 200
        # Nothing more was written: the gateway closed the connection.
        sock.settimeout(10)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")
        assert not received.endswith(b"data: [DONE]\r\n\r\n0\r\n\r\n")
    finally:
        sock.close()
    log = gateway.log()
    assert '"client_stalled":true' in log
    assert "client stopped reading" in log
