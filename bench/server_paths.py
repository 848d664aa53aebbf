"""What the client listener's HTTP server costs per request: uvicorn or a lean path.

Serves one trivial raw ASGI app (reads the request body, answers a small JSON
body with the headers the gateway adds, or streams three chunks) on 127.0.0.1
from a server process of its own:

- `uvicorn-edge`: uvicorn with the gateway's `EdgeProtocol`, built exactly as
  `vllm-gateway serve` builds its client listener (`gateway.cli.serve.uvicorn_config`:
  uvloop, httptools, the edge limits, the drain state);
- `uvicorn`: stock uvicorn, same options, its own `HttpToolsProtocol` (the edge's share);
- `lean`: the prototype in bench/lean_protocol.py, an `asyncio.Protocol` on
  `httptools.HttpRequestParser` calling the same app;
- `lean-1write`, `uvicorn-edge-1write`: the same, writing a Content-Length
  answer's head and body in one socket write instead of two.

This process is the load generator (raw asyncio streams on uvloop, keep-alive,
`--connections` connections of `--requests` requests each), never the server's.
The server's CPU seconds are read from /proc/<pid>/stat around each measured
burst, after a warm-up. Servers alternate, round after round, so a neighbour's
load falls on all of them alike; the ratio to the first server is per round.
`--in-process` instead feeds each protocol the request over a transport that
writes nothing, in this process: the protocol's and the app's Python only,
without sockets or epoll, so much less noisy.

    .venv/bin/python bench/server_paths.py --rounds 10 --requests 500
    .venv/bin/python bench/server_paths.py --rounds 10 --requests 500 --body stream
    .venv/bin/python bench/server_paths.py --in-process
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.cli.serve import uvicorn_config
from gateway.drain import Drain
from gateway.edge import EdgeProtocol
from gateway.settings import EdgeSettings, ListenSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lean_protocol import HeldHeadProtocol, LeanProtocol, serve_lean

SERVERS = ("uvicorn-edge", "uvicorn", "lean", "lean-1write", "uvicorn-edge-1write")
JSON_BODY = b'{"id":"cmpl-1","object":"chat.completion","choices":[{"index":0}],"usage":{}}'
CHUNKS = [b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'] * 2 + [b"data: [DONE]\n\n"]
REQUEST_BODY = b'{"model":"m","messages":[{"role":"user","content":"Hello!"}],"max_tokens":16}'
# An OpenAI SDK's request, as the gateway sees it: 13 headers.
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\n"
    b"Host: 127.0.0.1\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Connection: keep-alive\r\n"
    b"Accept: application/json\r\n"
    b"Content-Type: application/json\r\n"
    b"User-Agent: OpenAI/Python 1.54.0\r\n"
    b"X-Stainless-Lang: python\r\n"
    b"X-Stainless-Package-Version: 1.54.0\r\n"
    b"X-Stainless-OS: Linux\r\n"
    b"X-Stainless-Arch: x64\r\n"
    b"X-Stainless-Runtime: CPython\r\n"
    b"Authorization: Bearer vgw_0123456789abcdef0123456789abcdef\r\n"
    b"Content-Length: " + str(len(REQUEST_BODY)).encode() + b"\r\n\r\n" + REQUEST_BODY
)


# What the gateway adds to an answer: its request id, the `x-ratelimit-*` of two limits.
GATEWAY_HEADERS = [
    (b"x-request-id", b"chatcmpl-0123456789abcdef0123456789abcdef"),
    (b"date", b"Mon, 07 Dec 2026 18:00:00 GMT"),
] + [
    (b"x-ratelimit-%s-%s" % (part, kind), value)
    for kind in (b"requests", b"tokens")
    for part, value in ((b"limit", b"600"), (b"remaining", b"599"), (b"reset", b"100ms"))
]


def make_app(stream: bool) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if stream:
            headers = [(b"content-type", b"text/event-stream"), *GATEWAY_HEADERS]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for chunk in CHUNKS:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(JSON_BODY)).encode()),
            *GATEWAY_HEADERS,
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": JSON_BODY, "more_body": False})

    return app


PROTOCOLS: dict[str, type[HttpToolsProtocol]] = {
    "uvicorn-edge": EdgeProtocol,
    "uvicorn": HttpToolsProtocol,
    "uvicorn-edge-1write": HeldHeadProtocol,
}


def uvicorn_server(kind: str, app: Any, port: int) -> uvicorn.Config:
    listen = ListenSettings(host="127.0.0.1", port=port)
    config = uvicorn_config(listen, EdgeSettings(), app, lifespan="off", drain=Drain())
    config.http = PROTOCOLS[kind]
    config.backlog = 2048
    return config


def serve(kind: str, port: int, stream: bool) -> None:
    app = make_app(stream)
    if kind.startswith("lean"):
        uvloop.run(serve_lean(app, port, coalesce=kind == "lean-1write"))
        return
    server = uvicorn.Server(uvicorn_server(kind, app, port))
    print("ready", flush=True)
    uvloop.run(server.serve())


# --- the load -------------------------------------------------------------------------


async def one_connection(port: int, requests: int, stream: bool) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    done = 0
    for _ in range(requests):
        writer.write(REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head[:80])
        if stream:
            await reader.readuntil(b"0\r\n\r\n")
        else:
            start = head.lower().index(b"content-length: ") + 16
            await reader.readexactly(int(head[start : head.index(b"\r\n", start)]))
        done += 1
    writer.close()
    return done


async def burst(port: int, connections: int, requests: int, stream: bool) -> int:
    jobs = [one_connection(port, requests, stream) for _ in range(connections)]
    return sum(await asyncio.gather(*jobs))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def measure(kind: str, args: argparse.Namespace) -> float:
    """One server process, warmed up, then one measured burst: its CPU µs per request."""
    port = free_port()
    cmd = [sys.executable, __file__, "--serve", kind, "--port", str(port), "--body", args.body]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        stream = args.body == "stream"
        for _ in range(100):
            try:
                uvloop.run(burst(port, args.connections, 20, stream))  # warm-up
                break
            except OSError:
                time.sleep(0.05)
        before = cpu_seconds(proc.pid)
        done = uvloop.run(burst(port, args.connections, args.requests, stream))
        used = cpu_seconds(proc.pid) - before
        return used / done * 1e6
    finally:
        proc.terminate()
        proc.wait()


# --- in process -----------------------------------------------------------------------


class NullTransport(asyncio.Transport):
    """Counts what the server writes, sends nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(name)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def drive(kind: str, requests: int, stream: bool) -> float:
    """µs of this process's CPU per request, parsed and answered over a `NullTransport`."""
    loop = asyncio.get_running_loop()
    app = make_app(stream)
    protocol: asyncio.Protocol
    if kind.startswith("lean"):
        protocol = LeanProtocol(app, loop, 20.0, coalesce=kind == "lean-1write")
    else:
        config = uvicorn_server(kind, app, 8080)
        config.load()
        protocol = PROTOCOLS[kind](config, ServerState(), {}, loop)
    transport = NullTransport()
    protocol.connection_made(transport)

    async def run(count: int) -> None:
        for _ in range(count):
            protocol.data_received(REQUEST)
            for _ in range(3):  # the app's task: its first step, its end, the next
                await asyncio.sleep(0)

    await run(500)
    written = transport.written
    began = time.process_time()
    await run(requests)
    used = time.process_time() - began
    if transport.written - written < requests * len(JSON_BODY):
        raise RuntimeError(f"{kind} did not answer every request")
    return used / requests * 1e6


def in_process(kinds: list[str], args: argparse.Namespace) -> None:
    results: dict[str, list[float]] = {kind: [] for kind in kinds}
    for n in range(args.rounds):
        for kind in kinds if n % 2 == 0 else kinds[::-1]:
            results[kind].append(uvloop.run(drive(kind, 20_000, args.body == "stream")))
    report(kinds, results, [os.getloadavg()[0]], args, "in process, 20,000 requests per round")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--body", choices=("json", "stream"), default="json")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--requests", type=int, default=300, help="per connection")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--in-process", action="store_true")
    args = parser.parse_args()
    kinds = args.servers.split(",")
    if args.serve:
        serve(args.serve, args.port, args.body == "stream")
    elif args.in_process:
        in_process(kinds, args)
    else:
        over_sockets(kinds, args)


def over_sockets(kinds: list[str], args: argparse.Namespace) -> None:
    results: dict[str, list[float]] = {kind: [] for kind in kinds}
    loads = []
    for n in range(args.rounds):
        for kind in kinds if n % 2 == 0 else kinds[::-1]:
            results[kind].append(measure(kind, args))
        loads.append(os.getloadavg()[0])
        cells = "  ".join(f"{kind} {results[kind][-1]:6.1f}" for kind in kinds)
        print(f"round {n + 1}: {cells}  (µs CPU/request; load {loads[-1]:.2f})", flush=True)
    load = f"{args.connections} connections x {args.requests} requests"
    report(kinds, results, loads, args, load)


def report(
    kinds: list[str],
    results: dict[str, list[float]],
    loads: list[float],
    args: argparse.Namespace,
    load: str,
) -> None:
    base = results[kinds[0]]
    print(
        f"\n{args.body}, {load}, {args.rounds} rounds, "
        f"load average {min(loads):.2f}-{max(loads):.2f} on {os.cpu_count()} cores"
    )
    print(f"| server | median µs CPU / request | min | ratio to {kinds[0]} (median of rounds) |")
    print("|---|---|---|---|")
    for kind in kinds:
        ratios = [x / b for x, b in zip(results[kind], base, strict=True)]
        print(
            f"| {kind} | {statistics.median(results[kind]):.1f} | {min(results[kind]):.1f} "
            f"| {statistics.median(ratios):.3f} |"
        )


if __name__ == "__main__":
    main()
