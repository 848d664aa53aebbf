"""One HTTP/1.1 connection to a replica, and the response read from it.

The gateway's own upstream client (`upstream_client: native`): an asyncio
protocol fed to the `httptools` parser uvicorn already uses, written for this
one job. Each connection carries one request at a time; its response's body
is handed to the reader chunk by chunk as the parser decodes it (content-length
or chunked), with no copy beyond the parser's own. A connection goes back to
its pool only when its response was read to the end and both sides allow
keep-alive; any other end (error, cancellation, a close before the end)
closes it, which is what makes vLLM abort the generation.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import httptools

# Body bytes held for a reader that has not caught up: past this the socket stops being
# read, so a slow client never makes the gateway buffer a whole answer.
HIGH_WATER = 256 * 1024


class UpstreamClosed(Exception):
    """The replica's connection broke: closed, reset, or sent something that is not HTTP."""


class H1Response:
    """The status, headers and body of one response, readable as the body arrives.

    Its shape is the part of aiohttp's `ClientResponse` the forwarder uses
    (`status`, `raw_headers`, `content.readany()`, `content.read()`, `close()`),
    so the forwarder holds either without caring which.
    """

    __slots__ = ("_chunks", "_conn", "_done", "_error", "_size", "_waiter", "raw_headers", "status")

    def __init__(self, conn: H1Connection) -> None:
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self._conn: H1Connection | None = conn
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def content(self) -> H1Response:
        return self

    @property
    def connection(self) -> H1Connection | None:
        """The connection still reading this response; None once it is read or failed."""
        return self._conn

    async def readany(self) -> bytes:
        """The body bytes that have arrived (waiting for some); b"" at its end."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        chunks = self._chunks
        chunk = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        conn = self._conn
        if conn is not None and conn.paused:
            conn.resume()
        return chunk

    async def read(self) -> bytes:
        """The rest of the body."""
        parts = []
        while part := await self.readany():
            parts.append(part)
        return b"".join(parts)

    def close(self) -> None:
        """Done with this response: a connection not read to its end is closed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abandon()

    # Called by the connection ------------------------------------------------------------

    def feed(self, chunk: bytes) -> int:
        self._chunks.append(chunk)
        self._size += len(chunk)
        self._wake()
        return self._size

    def finish(self) -> None:
        self._done = True
        self._conn = None
        self._wake()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._conn = None
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class H1Connection(asyncio.Protocol):
    """A keep-alive connection; `release` is told when it may carry another request."""

    def __init__(self, release: Callable[[H1Connection], None]) -> None:
        self._release = release
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._response: H1Response | None = None
        self._head: asyncio.Future[H1Response] | None = None
        self._lost: BaseException | None = None
        self.closed = False
        self.paused = False
        # When the connection last went idle (the pool's clock), for its idle limit.
        self.idle_since = 0.0
        # Told once when the connection stops being busy (idle or closed): the pool's slot.
        self.on_free: Callable[[], None] | None = None

    # asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but behave as one.
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._response is None:
            # Bytes no request asked for: the connection cannot be trusted with another.
            self._broken(UpstreamClosed("the replica sent bytes no request asked for"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._broken(UpstreamClosed(f"the replica's response is malformed: {exc}"))

    def eof_received(self) -> bool:
        self._broken(UpstreamClosed("the replica closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._broken(UpstreamClosed("the replica's connection was lost"))

    # httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._response is None:
            # A second response after the one asked for, in the same read: the error ends
            # the parse (httptools raises it as a parser error), and the connection.
            raise UpstreamClosed("the replica sent bytes no request asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._response is not None
        self._response.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        response = self._response
        assert response is not None
        response.status = self._parser.get_status_code()
        head = self._head
        if head is not None and not head.done():
            head.set_result(response)

    def on_body(self, body: bytes) -> None:
        response = self._response
        assert response is not None
        if response.feed(body) > HIGH_WATER and not self.paused and self._transport is not None:
            self.paused = True
            self._transport.pause_reading()

    def on_message_complete(self) -> None:
        response, self._response = self._response, None
        assert response is not None
        keep = self._parser.should_keep_alive()
        response.finish()
        if self.paused:
            self.resume()
        if keep and not self.closed:
            # The parser goes on with the next response on this connection.
            self._release(self)
        else:
            self.close()

    # Used by the pool and the response -----------------------------------------------------

    def send(self, request: bytes) -> asyncio.Future[H1Response] | None:
        """Write REQUEST; a future for its response's head. None when the connection was
        already closed: then not a byte was sent, and the request may go elsewhere."""
        transport = self._transport
        if self.closed or transport is None or transport.is_closing():
            self.closed = True
            return None
        self._response = H1Response(self)
        head = self._head = asyncio.get_running_loop().create_future()
        transport.write(request)
        return head

    def resume(self) -> None:
        self.paused = False
        if self._transport is not None and not self.closed:
            self._transport.resume_reading()

    def abandon(self) -> None:
        """The reader gave up on its response before its end."""
        if self._response is not None:
            self._response = None
            self.close()

    def free(self) -> None:
        done, self.on_free = self.on_free, None
        if done is not None:
            done()

    def close(self) -> None:
        self.free()
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.close()

    def _broken(self, error: UpstreamClosed) -> None:
        self.close()
        response, self._response = self._response, None
        if response is None:
            return
        head = self._head
        if head is not None and not head.done():
            head.set_exception(error)
        elif response.status and _ends_at_close(response):
            # No length and not chunked: the body is everything up to the close.
            response.finish()
            return
        response.fail(error)


def _ends_at_close(response: H1Response) -> bool:
    for name, _ in response.raw_headers:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            return False
    return True
