"""An HTTP/1.1 server for the upstream client's tests that answers from a script.

A real TCP (or TLS) listener on the test's own event loop: each request it
reads is answered by the script, which may answer well, badly, partly, or not
at all, and close the connection at any moment. It counts the connections and
the requests it received, so a test can tell reuse from reconnection and a
retried request from one sent once.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

# A script gets the request's head and the connection's writer; it returns whether the
# connection may carry another request, or None to wait for the client to close it.
Script = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool | None]]


@dataclass
class ScriptedServer:
    script: Script
    tls: ssl.SSLContext | None = None
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    # Set when a connection's peer closed it: how a test sees the client let go.
    peer_closed: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def url(self, path: str = "/v1/chat/completions") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://localhost:{self.port}{path}"

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.sleep(0.01)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            while True:
                head = await _read_request(reader)
                if head is None:
                    self.peer_closed.set()
                    return
                self.requests.append(head)
                keep = await self.script(head, writer)
                if keep is None:
                    await reader.read()
                    self.peer_closed.set()
                if not keep:
                    return
        except (ConnectionError, RuntimeError, ssl.SSLError, asyncio.CancelledError):
            # The client left first (a write to a closed transport raises RuntimeError).
            self.peer_closed.set()
        finally:
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    """The head and body of one request (content-length only); None at the client's close."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


def answer(body: bytes, *, status: int = 200, extra: bytes = b"") -> bytes:
    """A whole content-length response."""
    return b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        status,
        len(body),
        extra,
        body,
    )


def chunked(parts: list[bytes]) -> bytes:
    """A whole chunked event-stream response with one chunk per part."""
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts if part)
    return STREAM_HEAD + chunks + b"0\r\n\r\n"


def replies(*data: bytes, keep: bool | None = True, pause: float = 0.0) -> Script:
    """A script writing DATA's pieces in turn (PAUSE seconds apart), then keeping the
    connection (KEEP), closing it (False) or waiting for the client to close it (None)."""

    async def script(_: bytes, writer: asyncio.StreamWriter) -> bool | None:
        for piece in data:
            writer.write(piece)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        return keep

    return script
