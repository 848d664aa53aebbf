"""SIGTERM drains a real gateway: /readyz turns 503 at once, the listener keeps serving
for the pre-stop delay and then refuses connections, streams in flight finish (or are
ended with the mid-stream error event when the grace runs out, their usage recorded),
no concurrency lease is left in Redis, and the process exits 0; the same with two
worker processes under the supervisor, and a second signal that ends the drain at once.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.cli.shutdown import REPEAT_AFTER_S
from tests.servers import (
    Process,
    RedisServer,
    free_port,
    gateway_config,
    run_gateway,
    run_simulator,
)

MODEL = "sim-model"
ADMIN_TOKEN = "admin-token-for-drain-tests-0123456789"
PEPPER = "pepper-for-the-drain-tests-0123456789abcdef"
PROMPT = [{"role": "user", "content": "Drain me gently"}]
WAIT_S = 60.0


@pytest.fixture(scope="module")
def deterministic_sim(module_tmp: Path) -> Iterator[Process]:
    with run_simulator(module_tmp, "--deterministic") as process:
        yield process


@pytest.fixture(scope="module")
def redis_db(module_redis: RedisServer) -> RedisServer:
    return module_redis


def drain_config(
    sim: Process, store: RedisServer, tenant: str, **extra: object
) -> dict[str, object]:
    """Keys, leases and usage in Redis; TENANT's requests hold a concurrency lease."""
    config = gateway_config(free_port(), {MODEL: [sim.url]}, **extra)
    config["auth"] = {"pepper": PEPPER, "key_store": {"backend": "redis", "redis_url": store.url}}
    config["admin"] = {"tokens": [ADMIN_TOKEN]}
    config["limits"] = {"backend": "redis", "tenants": {tenant: {"concurrent_requests": 50}}}
    return config


def new_key(gateway: Process, tenant: str) -> dict[str, str]:
    body = {"tenant": tenant, "name": "drain"}
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    deadline = time.monotonic() + WAIT_S
    response = None
    while True:  # workers may still be starting behind the supervisor's port
        try:
            response = httpx.post(
                f"{gateway.url}/admin/v1/keys", json=body, headers=headers, timeout=30
            )
        except httpx.TransportError:
            response = None
        if (response and response.status_code == 201) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert response is not None and response.status_code == 201, response and response.text
    return {"Authorization": f"Bearer {response.json()['key']}"}


def chat(max_tokens: int, *, stream: bool) -> dict[str, Any]:
    return {"model": MODEL, "messages": PROMPT, "max_tokens": max_tokens, "stream": stream}


def stream_bytes(url: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
    with httpx.stream("POST", url, json=body, headers=headers, timeout=WAIT_S) as response:
        assert response.status_code == 200, response.read()
        return b"".join(response.iter_raw())


def leases(store: RedisServer) -> int:
    """Concurrency leases held in Redis by any gateway (limits/redis_limiter.py's keys)."""
    client = redis.Redis.from_url(store.url)
    try:
        return sum(int(client.zcard(key)) for key in client.scan_iter(match="vgw:rl:*:c"))
    finally:
        client.close()


def usage(store: RedisServer, tenant: str) -> dict[str, int]:
    """The tenant's usage counters summed over days and models (usage/redis_store.py)."""
    client = redis.Redis.from_url(store.url, decode_responses=True)
    try:
        fields = client.hgetall(f"vgw:usage:tenant:{tenant}")
    finally:
        client.close()
    totals: dict[str, int] = {}
    for field, value in fields.items():
        counter = field.rsplit("|", 1)[1]
        totals[counter] = totals.get(counter, 0) + int(value)
    return totals


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def kept_alive(port: int) -> socket.socket:
    """A connection left idle after one answer (HTTP/1.1 keeps it open)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
    answer = b""
    while not answer.endswith(b'{"status":"ok"}'):
        answer += sock.recv(4096)
    assert b"connection: close" not in answer.lower()
    return sock


class RequestLoop:
    """Small requests, one after another on one kept-alive client, until stopped."""

    def __init__(self, gateway: Process, headers: dict[str, str]) -> None:
        self.responses: list[httpx.Response] = []
        self.errors: list[Exception] = []
        self.after_signal: list[httpx.Response] = []
        self.signalled = False
        self._stop = threading.Event()
        self._url = f"{gateway.url}/v1/chat/completions"
        self._headers = headers
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(headers=self._headers, timeout=WAIT_S) as client:
            while not self._stop.is_set():
                signalled = self.signalled
                try:
                    response = client.post(self._url, json=chat(2, stream=False))
                except httpx.TransportError as exc:
                    self.errors.append(exc)
                    time.sleep(0.05)
                    continue
                self.responses.append(response)
                if signalled:
                    self.after_signal.append(response)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT_S)


def test_sigterm_drains_streams_and_releases_every_lease(
    tmp_path: Path, deterministic_sim: Process, redis_db: RedisServer
) -> None:
    config = drain_config(
        deterministic_sim, redis_db, "drain-one", drain={"pre_stop_delay": 3, "grace": 60}
    )
    with run_gateway(tmp_path, config) as gateway:
        streams_key, loop_key = new_key(gateway, "drain-one"), new_key(gateway, "drain-loop")
        _drain_with_streams_and_a_loop(gateway, deterministic_sim, redis_db, streams_key, loop_key)
    usage_of_streams = usage(redis_db, "drain-one")
    # Written by the recorder's last flush: three complete answers, usage known.
    assert usage_of_streams["requests"] == 3
    assert usage_of_streams["completion_tokens"] == 3 * 40
    assert usage_of_streams.get("estimated_requests", 0) == 0


def test_two_workers_drain_under_the_supervisor(
    tmp_path: Path, deterministic_sim: Process, redis_db: RedisServer
) -> None:
    config = drain_config(
        deterministic_sim,
        redis_db,
        "drain-two",
        drain={"pre_stop_delay": 3, "grace": 60},
        workers=2,
    )
    with run_gateway(tmp_path, config) as gateway:
        streams_key, loop_key = new_key(gateway, "drain-two"), new_key(gateway, "drain-loop")
        _drain_with_streams_and_a_loop(gateway, deterministic_sim, redis_db, streams_key, loop_key)
    assert usage(redis_db, "drain-two")["requests"] == 3


def _drain_with_streams_and_a_loop(
    gateway: Process,
    sim: Process,
    store: RedisServer,
    streams_key: dict[str, str],
    loop_key: dict[str, str],
) -> None:
    url = f"{gateway.url}/v1/chat/completions"
    body = {**chat(40, stream=True), "stream_options": {"include_usage": True}}
    slow = {**streams_key, "x-sim-itl-ms": "200"}
    # The same stream straight from the (deterministic) simulator: what each must carry.
    expected = httpx.post(f"{sim.url}/v1/chat/completions", json=body, timeout=WAIT_S).content
    assert expected.endswith(b"data: [DONE]\n\n")
    with ThreadPoolExecutor(3) as pool:
        streams: list[Future[bytes]] = [
            pool.submit(stream_bytes, url, body, slow) for _ in range(3)
        ]
        loop = RequestLoop(gateway, loop_key)
        idle = kept_alive(gateway.port)
        wait_until(lambda: leases(store) >= 3, "the three streams hold their leases")
        wait_until(lambda: len(loop.responses) >= 3, "the request loop runs")
        loop.signalled = True
        gateway.proc.send_signal(signal.SIGTERM)
        # Still accepting (the pre-stop delay), but out of rotation.
        wait_until(lambda: _draining(gateway), "/readyz says draining")
        # After the pre-stop delay, a new connection is refused while streams still run,
        # and an idle kept-alive connection has been closed.
        wait_until(lambda: refuses_connections(gateway.port), "the listener closes")
        with idle:
            assert idle.recv(1) == b""
        assert gateway.proc.poll() is None
        assert not all(stream.done() for stream in streams)
        loop.stop()
        results = [stream.result(timeout=WAIT_S) for stream in streams]
    assert gateway.proc.wait(timeout=WAIT_S) == 0, gateway.log()
    for result in results:
        assert result == expected
    # Every answer the loop got is a success; once the drain began they close the connection.
    assert loop.responses
    assert {response.status_code for response in loop.responses} == {200}
    assert any(r.headers.get("connection") == "close" for r in loop.after_signal)
    assert leases(store) == 0


def _draining(gateway: Process) -> bool:
    response = httpx.get(f"{gateway.url}/readyz", timeout=10)
    if response.status_code != 503:
        return False
    payload = response.json()
    assert payload["status"] == "draining", payload
    assert payload["checks"]["drain"] == "draining"
    return True


def test_a_stream_longer_than_the_grace_is_ended_and_charged(
    tmp_path: Path, deterministic_sim: Process, redis_db: RedisServer
) -> None:
    config = drain_config(
        deterministic_sim, redis_db, "drain-grace", drain={"pre_stop_delay": 0, "grace": 2}
    )
    with run_gateway(tmp_path, config) as gateway:
        key = new_key(gateway, "drain-grace")
        url = f"{gateway.url}/v1/chat/completions"
        with ThreadPoolExecutor(2) as pool:
            long_stream = pool.submit(
                stream_bytes, url, chat(200, stream=True), {**key, "x-sim-itl-ms": "200"}
            )
            not_started = pool.submit(
                httpx.post,
                url,
                json=chat(5, stream=False),
                headers={**key, "x-sim-ttft-ms": "120000"},
                timeout=WAIT_S,
            )
            wait_until(lambda: leases(redis_db) >= 2, "both requests hold their leases")
            gateway.proc.send_signal(signal.SIGTERM)
            raw = long_stream.result(timeout=WAIT_S)
            refused = not_started.result(timeout=WAIT_S)
        assert gateway.proc.wait(timeout=WAIT_S) == 0, gateway.log()
    _assert_ended_by_the_drain(raw)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "shutting_down"
    assert refused.headers["retry-after"] == "1"
    assert leases(redis_db) == 0
    # The stream's usage never arrived: it is charged its reservation, marked estimated;
    # the answer that never started costs nothing.
    counts = usage(redis_db, "drain-grace")
    assert counts["requests"] == 1
    assert counts["estimated_requests"] == 1
    assert counts["completion_tokens"] == 200


def test_a_second_signal_ends_the_drain_at_once(
    tmp_path: Path, deterministic_sim: Process, redis_db: RedisServer
) -> None:
    config = drain_config(
        deterministic_sim, redis_db, "drain-now", drain={"pre_stop_delay": 0, "grace": 600}
    )
    with run_gateway(tmp_path, config) as gateway:
        key = new_key(gateway, "drain-now")
        url = f"{gateway.url}/v1/chat/completions"
        with ThreadPoolExecutor(1) as pool:
            long_stream = pool.submit(
                stream_bytes, url, chat(2000, stream=True), {**key, "x-sim-itl-ms": "200"}
            )
            wait_until(lambda: leases(redis_db) >= 1, "the stream holds its lease")
            gateway.proc.send_signal(signal.SIGINT)
            wait_until(lambda: "draining" in gateway.log(), "the drain begins")
            # Signals closer together than this count once (a forwarded copy).
            time.sleep(REPEAT_AFTER_S + 0.5)
            gateway.proc.send_signal(signal.SIGTERM)
            raw = long_stream.result(timeout=WAIT_S)
        # Well before the grace of 600 s and the stream's 400 s.
        assert gateway.proc.wait(timeout=WAIT_S) == 0, gateway.log()
    _assert_ended_by_the_drain(raw)
    assert leases(redis_db) == 0
    assert usage(redis_db, "drain-now")["estimated_requests"] == 1


def _assert_ended_by_the_drain(raw: bytes) -> None:
    events = [event for event in raw.decode().split("\n\n") if event]
    assert len(events) > 3, "the stream ran before it was ended"
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert "shutting down" in error["message"]
    assert error["code"] == 503
