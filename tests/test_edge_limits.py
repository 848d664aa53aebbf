"""The listeners' HTTP edge against a real gateway: head and body limits, read timeouts,
the connection cap. Hostile clients are raw sockets, so nothing smooths their bytes."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from tests.servers import Process, free_port, gateway_config, run_gateway

MODEL = "sim-model"
ADMIN_TOKEN = "admin-token-for-edge-tests-0123456789"
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
KEEP_ALIVE_S = 1
MAX_BODY = 64 * 1024
# Generous: each wait is for something due within about a second.
WAIT_S = 10.0
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def admin_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, sim: Process, admin_port: int) -> Iterator[Process]:
    edge = {
        "header_timeout": HEADER_TIMEOUT_S,
        "body_timeout": BODY_TIMEOUT_S,
        "keep_alive_timeout": KEEP_ALIVE_S,
    }
    admin = {"tokens": [ADMIN_TOKEN], "listen": {"host": "127.0.0.1", "port": admin_port}}
    config = gateway_config(
        free_port(), {MODEL: [sim.url]}, edge=edge, max_body_bytes=MAX_BODY, admin=admin
    )
    with run_gateway(module_tmp, config) as process:
        yield process


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error_code(self) -> str:
        error = json.loads(self.body)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        code: str = error["code"]
        return code


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    sock.settimeout(WAIT_S)
    return sock


def read_answer(sock: socket.socket) -> Answer:
    """One HTTP/1.1 response with a content-length, read from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode().split("\r\n")
    headers = {}
    for line in lines:
        name, value = line.split(":", 1)
        headers[name.strip().lower()] = value.strip()
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of the body"
        body += chunk
    return Answer(int(status_line.split()[1]), headers, body)


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server ends the connection (EOF or reset) within WAIT_S; data is drained."""
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Flood:
    """Sends `blocks` from a thread until told to stop, the server hangs up, or they run out."""

    def __init__(self, sock: socket.socket, block: bytes, total: int, pause_s: float = 0) -> None:
        self.sock, self.block, self.total, self.pause_s = sock, block, total, pause_s
        self.sent = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while self.sent < self.total and not self.stopped.is_set():
                self.sock.sendall(self.block)
                self.sent += len(self.block)
                if self.pause_s:
                    time.sleep(self.pause_s)
        except OSError:
            pass  # the server hung up: what the tests expect

    def stop(self) -> int:
        """Stop, and return how much had been sent when asked."""
        sent = self.sent
        self.stopped.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        self.thread.join(WAIT_S)
        return sent


def auth_line(gateway: Process) -> bytes:
    return f"Authorization: Bearer {gateway.api_key}\r\n".encode()


def test_64_mb_of_header_lines_cost_little_memory_and_get_431(gateway: Process) -> None:
    httpx.get(f"{gateway.url}/v1/models", headers=gateway.auth).raise_for_status()
    before = rss_bytes(gateway.proc.pid)
    sock = connect(gateway.port)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n")
    line = b"X-Padding: " + b"a" * 1000 + b"\r\n"
    flood = Flood(sock, line * 64, total=64 * 1024 * 1024)
    answer = read_answer(sock)
    # The client goes on until the server hangs up: what it sent meanwhile is drained.
    flood.thread.join(WAIT_S)
    assert answer.status == 431
    assert answer.headers["connection"] == "close"
    assert answer.error_code() == "headers_too_large"
    assert closed_by_server(sock)
    sock.close()
    grown = rss_bytes(gateway.proc.pid) - before
    assert grown < 20 * 1024 * 1024, f"RSS grew by {grown} bytes"
    print(f"RSS grew by {grown} bytes; {flood.sent} header bytes sent")


def test_a_100_kb_header_is_refused_431(gateway: Process) -> None:
    headers = {**gateway.auth, "X-Big": "b" * 100_000}
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 431
    assert response.json()["error"]["code"] == "headers_too_large"


def test_too_many_headers_are_refused_431(gateway: Process) -> None:
    headers = [(f"X-Many-{i}", "v") for i in range(150)]
    response = httpx.get(f"{gateway.url}/v1/models", headers=[*gateway.auth.items(), *headers])
    assert response.status_code == 431


def test_a_20_kb_url_is_refused_414(gateway: Process) -> None:
    response = httpx.get(f"{gateway.url}/v1/models?q={'u' * 20_000}", headers=gateway.auth)
    assert response.status_code == 414
    assert response.json()["error"]["code"] == "url_too_long"


def test_normal_requests_with_many_normal_headers_still_work(gateway: Process) -> None:
    # 20 kB of headers in all: under the 32 KiB default.
    headers = {**gateway.auth, **{f"X-Trace-{i}": "t" * 1000 for i in range(20)}}
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 200
    assert response.json()["choices"]


def test_the_admin_listener_keeps_the_same_limits(gateway: Process, admin_port: int) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    url = f"http://127.0.0.1:{admin_port}/admin/v1/keys"
    assert httpx.get(url, headers=admin).status_code == 200
    assert httpx.get(url, headers={**admin, "X-Big": "b" * 100_000}).status_code == 431
    assert httpx.get(f"{url}?q={'u' * 20_000}", headers=admin).status_code == 414


def test_a_partial_request_line_is_answered_408_and_closed(gateway: Process) -> None:
    with connect(gateway.port) as sock:
        sock.sendall(b"GET /v1/mod")
        answer = read_answer(sock)
        assert answer.status == 408
        assert answer.error_code() == "request_timeout"
        assert closed_by_server(sock)


def test_partial_headers_are_answered_408(gateway: Process) -> None:
    with connect(gateway.port) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
        for _ in range(3):  # a trickle does not restart the clock
            time.sleep(HEADER_TIMEOUT_S / 3)
            sock.sendall(b"x")
        assert read_answer(sock).status == 408


def test_a_silent_connection_is_closed(gateway: Process) -> None:
    with connect(gateway.port) as sock:
        assert closed_by_server(sock)


def test_an_idle_keep_alive_connection_is_closed(gateway: Process) -> None:
    with connect(gateway.port) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\n" + auth_line(gateway) + b"\r\n")
        assert read_answer(sock).status == 200
        # Within a few keep-alive timeouts, well before uvicorn's own default would.
        sock.settimeout(KEEP_ALIVE_S * 4)
        assert closed_by_server(sock)


def test_a_trickled_body_is_answered_408(gateway: Process) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n" + auth_line(gateway)
    with connect(gateway.port) as sock:
        sock.sendall(head + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        # A byte every 0.1 s: the body would take 100 s.
        trickle = Flood(sock, b" ", total=999, pause_s=0.1)
        answer = read_answer(sock)
        trickle.stop()
        assert answer.status == 408
        assert answer.headers["connection"] == "close"
        assert answer.error_code() == "request_timeout"


def test_the_admin_listener_answers_a_trickled_body_408(gateway: Process, admin_port: int) -> None:
    head = (
        f"POST /admin/v1/keys HTTP/1.1\r\nHost: gateway\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n{"
    ).encode()
    with connect(admin_port) as sock:
        sock.sendall(head)
        trickle = Flood(sock, b" ", total=999, pause_s=0.1)
        answer = read_answer(sock)
        trickle.stop()
        assert answer.status == 408
        assert answer.error_code() == "request_timeout"
    # The key store is untouched, and the listener still serves.
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    keys = httpx.get(f"http://127.0.0.1:{admin_port}/admin/v1/keys", headers=admin)
    assert keys.status_code == 200


def test_a_kept_alive_connection_s_next_head_has_its_own_clock(gateway: Process) -> None:
    request = b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\n" + auth_line(gateway) + b"\r\n"
    with connect(gateway.port) as sock:
        for _ in range(2):  # answered, and the connection kept, twice
            sock.sendall(request)
            assert read_answer(sock).status == 200
            time.sleep(HEADER_TIMEOUT_S * 0.6)
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\n")
        answer = read_answer(sock)
        assert answer.status == 408
        assert closed_by_server(sock)


def test_a_huge_chunked_body_is_refused_413_while_it_is_still_sent(gateway: Process) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n" + auth_line(gateway)
    total = 256 * 1024 * 1024
    sock = connect(gateway.port)
    sock.sendall(head + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 16384
    flood = Flood(sock, b"%x\r\n" % len(chunk) + chunk + b"\r\n", total=total)
    answer = read_answer(sock)
    # While the client still sends, the server hangs up rather than drain the rest.
    hung_up = closed_by_server(sock)
    sent = flood.stop()
    sock.close()
    assert answer.status == 413
    assert answer.headers["connection"] == "close"
    assert hung_up
    assert answer.error_code() == "request_too_large"
    assert sent < total // 4, f"the client had sent {sent} bytes before the answer"


def test_connections_over_the_limit_get_503_until_others_close(
    tmp_path: Path, sim: Process
) -> None:
    config = gateway_config(free_port(), {MODEL: [sim.url]}, edge={"max_connections": 3})
    with run_gateway(tmp_path, config) as gateway:
        request = b"GET /v1/models HTTP/1.1\r\nHost: gateway\r\n" + auth_line(gateway) + b"\r\n"
        held = [connect(gateway.port) for _ in range(3)]
        for sock in held:
            sock.sendall(request)
            assert read_answer(sock).status == 200
        with connect(gateway.port) as extra:
            extra.sendall(request)
            answer = read_answer(extra)
            assert answer.status == 503
            assert answer.error_code() == "too_many_connections"
            assert closed_by_server(extra)
        for sock in held:  # the admitted ones still work
            sock.sendall(request)
            assert read_answer(sock).status == 200
        held.pop().close()
        assert _served_once_a_slot_frees(gateway, request)
        for sock in held:
            sock.close()


def _served_once_a_slot_frees(gateway: Process, request: bytes) -> bool:
    # The server notices the close asynchronously: try a few times.
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        with connect(gateway.port) as sock:
            sock.sendall(request)
            if read_answer(sock).status == 200:
                return True
        time.sleep(0.1)
    return False


def test_limits_hold_over_https(tmp_path: Path, sim: Process) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = tmp_path / "server.pem", tmp_path / "server.key"
    cert.private_key_and_cert_chain_pem.write_to_path(certfile)
    cert.private_key_pem.write_to_path(keyfile)
    config = gateway_config(free_port(), {MODEL: [sim.url]})
    listen = config["listen"]
    assert isinstance(listen, dict)
    listen["tls"] = {"certfile": str(certfile), "keyfile": str(keyfile)}
    with run_gateway(tmp_path, config) as gateway:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        base = f"https://127.0.0.1:{gateway.port}/v1/models"
        with httpx.Client(verify=context, headers=gateway.auth) as client:
            assert client.get(base).status_code == 200
            assert client.get(base, headers={"X-Big": "b" * 100_000}).status_code == 431
            assert client.get(f"{base}?q={'u' * 20_000}").status_code == 414
