"""The lean server path measured by bench/server_paths.py, and uvicorn with one write per answer.

`LeanProtocol` is a prototype, not the gateway's server: an `asyncio.Protocol` on
`httptools.HttpRequestParser` that calls a raw ASGI app with a minimal scope,
receive and send. It keeps what the per-request cost depends on: keep-alive
with an idle timer, Content-Length and chunked answers, pipelined requests
queued, write flow control, a disconnect seen by `receive`, the edge's header
budget counted per header and its head clock. It leaves out what costs nothing
on the usual request (TLS, the drain, 100-continue, HEAD, the body clock, the
edge's refusals with their own status) and a few things that do: response
header validation, the `date` header, the task registry a graceful shutdown
walks. A broken limit or a bad request is answered 400 and closed.

`HeldHead` is the cycle's transport in uvicorn that holds a Content-Length
answer's head until its body's first write: one socket write per answer, not two.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import httptools

from gateway.edge import EdgeProtocol

STATUS = {
    200: b"HTTP/1.1 200 OK\r\n",
    404: b"HTTP/1.1 404 Not Found\r\n",
    500: b"HTTP/1.1 500 Internal Server Error\r\n",
}
FAILED = b"content-length: 0\r\nconnection: close\r\n\r\n"


class Cycle:
    """One request: its body as it arrives, its answer's framing."""

    __slots__ = (
        "body",
        "chunked",
        "complete",
        "head",
        "keep_alive",
        "read",
        "scope",
        "started",
        "waiter",
    )

    def __init__(self, scope: dict[str, Any], keep_alive: bool) -> None:
        self.scope = scope
        self.keep_alive = keep_alive
        self.body = b""
        self.complete = False  # the request body has all arrived
        self.read = False  # ... and the application has read it
        self.started = False
        self.chunked = False
        self.head = b""  # a Content-Length answer's head, held to leave with its body
        self.waiter: asyncio.Future[None] | None = None


class LeanProtocol(asyncio.Protocol):
    def __init__(
        self, app: Any, loop: asyncio.AbstractEventLoop, keep_alive_s: float, coalesce: bool
    ) -> None:
        self.app = app
        self.coalesce = coalesce
        self.loop = loop
        self.keep_alive_s = keep_alive_s
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.pipeline: deque[Cycle] = deque()
        self.current: Cycle | None = None  # the cycle being answered
        self.parsing: Cycle | None = None  # the cycle being parsed
        self.headers: list[tuple[bytes, bytes]] = []
        self.url = b""
        self.idle: asyncio.TimerHandle | None = None
        self.clock: asyncio.TimerHandle | None = None
        self.write_paused: asyncio.Future[None] | None = None
        self.lost = False
        self.header_bytes_left = self.headers_left = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server = transport.get_extra_info("sockname")[:2]
        self.client = transport.get_extra_info("peername")[:2]
        self.clock = self.loop.call_later(10.0, self.transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        for timer in (self.idle, self.clock):
            if timer is not None:
                timer.cancel()
        for cycle in (self.current, self.parsing):
            if cycle is not None and cycle.waiter is not None and not cycle.waiter.done():
                cycle.waiter.set_result(None)
        if self.write_paused is not None and not self.write_paused.done():
            self.write_paused.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n")
            self.transport.close()

    def pause_writing(self) -> None:
        self.write_paused = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.write_paused is not None and not self.write_paused.done():
            self.write_paused.set_result(None)
        self.write_paused = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.header_bytes_left = 32 * 1024
        self.headers_left = 100

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes_left -= len(name) + len(value) + 4
        self.headers_left -= 1
        if self.header_bytes_left < 0 or self.headers_left < 0:
            raise httptools.HttpParserError("header section too large")
        self.headers.append((name.lower(), value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        if self.clock is not None:
            self.clock.cancel()
            self.clock = None
        parser = self.parser
        url = httptools.parse_url(self.url)
        path = url.path.decode("ascii")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": parser.get_http_version(),
            "method": parser.get_method().decode("ascii"),
            "scheme": "http",
            "path": path,
            "raw_path": url.path,
            "query_string": url.query or b"",
            "root_path": "",
            "headers": self.headers,
            "server": self.server,
            "client": self.client,
        }
        cycle = Cycle(scope, parser.should_keep_alive())
        self.parsing = cycle
        if self.current is None:
            self._start(cycle)
        else:
            self.pipeline.append(cycle)
            self.transport.pause_reading()

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        if cycle is not None:
            cycle.body += body

    def on_message_complete(self) -> None:
        cycle = self.parsing
        if cycle is not None:
            cycle.complete = True
            if cycle.waiter is not None and not cycle.waiter.done():
                cycle.waiter.set_result(None)

    def _start(self, cycle: Cycle) -> None:
        self.current = cycle
        self.loop.create_task(self._run(cycle))

    async def _run(self, cycle: Cycle) -> None:
        async def receive() -> dict[str, Any]:
            # Waits for more body; once all of it was read, for the disconnect (or the end).
            if (not cycle.complete or cycle.read) and not self.lost and self.current is cycle:
                cycle.waiter = self.loop.create_future()
                await cycle.waiter
            if self.lost or self.current is not cycle:
                return {"type": "http.disconnect"}
            cycle.read = cycle.complete
            body, cycle.body = cycle.body, b""
            return {"type": "http.request", "body": body, "more_body": not cycle.complete}

        async def send(message: dict[str, Any]) -> None:
            if self.write_paused is not None:
                await self.write_paused
            if self.lost:
                return
            self._send(cycle, message)

        try:
            await self.app(cycle.scope, receive, send)
        except Exception:
            if not cycle.started:
                self.transport.write(STATUS[500] + FAILED)
            self.transport.close()

    def _send(self, cycle: Cycle, message: dict[str, Any]) -> None:
        if not cycle.started:
            cycle.started = True
            head = [STATUS[message["status"]]]
            chunked = True
            for name, value in message.get("headers", ()):
                if name == b"content-length":
                    chunked = False
                head.append(name + b": " + value + b"\r\n")
            if chunked:
                head.append(b"transfer-encoding: chunked\r\n")
            if not cycle.keep_alive:
                head.append(b"connection: close\r\n")
            head.append(b"\r\n")
            cycle.chunked = chunked
            if chunked or not self.coalesce:
                self.transport.write(b"".join(head))
            else:
                cycle.head = b"".join(head)
            return
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if cycle.chunked:
            out = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            self.transport.write(out if more else out + b"0\r\n\r\n")
        elif cycle.head:
            self.transport.write(cycle.head + body)
            cycle.head = b""
        elif body:
            self.transport.write(body)
        if not more:
            self._complete(cycle)

    def _complete(self, cycle: Cycle) -> None:
        self.current = None
        if cycle.waiter is not None and not cycle.waiter.done():
            cycle.waiter.set_result(None)
        if not cycle.keep_alive:
            self.transport.close()
            return
        if self.pipeline:
            self.transport.resume_reading()
            self._start(self.pipeline.popleft())
        else:
            self.idle = self.loop.call_later(self.keep_alive_s, self.transport.close)


async def serve_lean(app: Any, port: int, coalesce: bool) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: LeanProtocol(app, loop, 20.0, coalesce), "127.0.0.1", port, backlog=2048
    )
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


class HeldHead:
    """The cycle's transport: a Content-Length answer's head waits for its body's first write."""

    __slots__ = ("head", "headed", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.head = b""
        self.headed = False  # the answer's head was written or is held

    def write(self, data: bytes) -> None:
        if self.head:
            data, self.head = self.head + data, b""
        elif not self.headed and not data.startswith(b"HTTP/1.1 1"):
            # The head (a 100 Continue is not): uvicorn writes it first, whole.
            self.headed = True
            if b"\r\ncontent-length: " in data:
                self.head = data
                return
        self.transport.write(data)

    def flush(self) -> None:
        if self.head:
            self.transport.write(self.head)
            self.head = b""

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.flush()
        self.transport.close()


class HeldHeadProtocol(EdgeProtocol):
    """The gateway's edge protocol, each cycle writing through a `HeldHead`. A sketch:
    a HEAD answer's held head is flushed by the protocol's current cycle, which with
    pipelining may be a later one."""

    __slots__ = ()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = HeldHead(self.transport)  # type: ignore[assignment]

    def on_response_complete(self) -> None:
        transport = self.cycle.transport
        if isinstance(transport, HeldHead):
            transport.flush()
        super().on_response_complete()
