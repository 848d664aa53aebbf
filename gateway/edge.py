"""The listeners' HTTP edge: limits on connections and request heads, kept by the protocol.

uvicorn's httptools protocol buffers a request line and headers without bound
(llhttp has no size limit and uvicorn's h11 limit does not apply to it), waits
for a head forever, and caps connections only in plain text. `EdgeProtocol`
subclasses it and adds, before any ASGI code runs:

- at most `max_connections` connections per listener; one more is answered 503;
- a request line over `max_url_bytes` is answered 414, a header section over
  `max_header_bytes` or `max_headers` 431, counted as the bytes arrive, so at
  most one socket read is held beyond the limit;
- a head not complete `header_timeout` seconds after the connection opened (or,
  on a kept-alive connection, after its first byte) is answered 408; a
  connection that sent nothing is closed;
- a body not complete `body_timeout` seconds after its head is answered 408 (the
  application, waiting for the body, sees the client as gone), on both listeners.

The clocks cost nothing on the usual request, whose head and body arrive in one
read: one is armed only when a read ends with the head or the body incomplete.

While the gateway drains (gateway/drain.py), each request's response carries
`connection: close`, so kept-alive clients leave this process for another.

Each refusal is an OpenAI-shaped error with `connection: close`; the connection
then half-closes and drains what the client still sends for a moment, so the
client reads the answer rather than a reset. The overrides rely on the parser
callbacks and `data_received` of uvicorn's `HttpToolsProtocol`, unchanged
from uvicorn 0.33 to 0.55.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.drain import Drain
from gateway.errors import (
    GatewayError,
    HeadersTooLarge,
    RequestTimeout,
    TooManyConnections,
    URITooLong,
)
from gateway.settings import EdgeSettings

logger = logging.getLogger("gateway.edge")

# How long a refused connection drains the client's bytes before it is closed.
LINGER_S = 2.0
# Request-line bytes besides the URL (method, version, CRLFs), allowed in the raw count.
HEAD_SLACK = 1024
# uvicorn's own callbacks, called directly: cheaper than super() on every header.
_on_url = HttpToolsProtocol.on_url
_on_header = HttpToolsProtocol.on_header


class EdgeConfig(uvicorn.Config):
    """uvicorn's config plus the edge limits and the drain state, which it hands to each
    connection's protocol."""

    def __init__(
        self, app: Any, *, edge: EdgeSettings, drain: Drain | None = None, **kwargs: Any
    ) -> None:
        super().__init__(
            app, http=EdgeProtocol, timeout_keep_alive=edge.keep_alive_timeout, **kwargs
        )
        self.edge = edge
        self.drain = drain


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a head that broke a limit."""


class EdgeProtocol(HttpToolsProtocol):
    # Slots, not the instance dict: a few hundred bytes less per open connection.
    __slots__ = (
        "_clock",
        "_head_started",
        "_header_bytes_left",
        "_headers_left",
        "_in_body",
        "_in_head",
        "_raw_head_bytes",
        "_refusal",
        "_refused",
        "_url_bytes",
        "drain",
        "edge",
    )

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.edge = config.edge if isinstance(config, EdgeConfig) else EdgeSettings()
        self.drain = config.drain if isinstance(config, EdgeConfig) else None
        self._in_head = False
        self._in_body = False
        self._head_started = 0.0
        # The one clock of the connection: its first head, then whatever is incomplete.
        self._clock: asyncio.TimerHandle | None = None
        # Raw bytes received while a head was incomplete: bounds what httptools holds
        # of a header value that has not ended yet (it calls on_header only at its end).
        self._raw_head_bytes = 0
        self._url_bytes = 0
        self._header_bytes_left = self.edge.max_header_bytes
        self._headers_left = self.edge.max_headers
        self._refusal: GatewayError | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # `connections` holds this one already; a refused one leaves it, so it is not counted.
        if len(self.connections) > self.edge.max_connections:
            self.connections.discard(self)
            limit = self.edge.max_connections
            self._refuse(
                TooManyConnections(
                    f"This server holds its limit of {limit} open connections; try again shortly."
                )
            )
            return
        # The first head is due `header_timeout` after the connection opened.
        self._clock = self.loop.call_later(self.edge.header_timeout, self._timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """uvicorn's own, but a broken limit is answered with its status instead of 400."""
        if self._refused:
            return  # draining before the close
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse(self._refusal)
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_head:
            # May over-count a pipelined head that began after another request's body.
            self._raw_head_bytes += len(data)
            if (
                self._raw_head_bytes
                > self.edge.max_url_bytes + self.edge.max_header_bytes + HEAD_SLACK
            ):
                self._refuse(self._headers_too_large())
            elif self._clock is None:
                # The head is due `header_timeout` after its first byte.
                due = self._head_started + self.edge.header_timeout
                self._clock = self.loop.call_at(due, self._timed_out)
        elif self._in_body and self._clock is None:
            self._clock = self.loop.call_later(self.edge.body_timeout, self._timed_out)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_started = self.loop.time()
        self._raw_head_bytes = self._url_bytes = 0
        self._header_bytes_left = self.edge.max_header_bytes
        self._headers_left = self.edge.max_headers

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > self.edge.max_url_bytes:
            limit = self.edge.max_url_bytes
            self._stop_parsing(
                URITooLong(f"The request URL is longer than this gateway's limit of {limit} bytes.")
            )
        _on_url(self, url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Called for every header of every request: two budgets counted down, one test.
        # A header costs as on the wire: name, ": ", value, CRLF.
        self._header_bytes_left -= len(name) + len(value) + 4
        self._headers_left -= 1
        if self._header_bytes_left < 0 or self._headers_left < 0:
            self._stop_parsing(self._headers_too_large())
        _on_header(self, name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        self._stop_clock()
        super().on_headers_complete()
        drain = self.drain
        if drain is not None and drain.draining and self.cycle is not None:
            # The answer is the connection's last: the client reconnects, to another replica.
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        self._in_body = False
        self._stop_clock()
        super().on_message_complete()

    def _headers_too_large(self) -> HeadersTooLarge:
        edge = self.edge
        return HeadersTooLarge(
            f"The request's header section is larger than this gateway's limit of "
            f"{edge.max_header_bytes} bytes or {edge.max_headers} headers."
        )

    def _stop_parsing(self, error: GatewayError) -> None:
        self._refusal = error
        raise _Refused(error.message)

    def _stop_clock(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None

    def _timed_out(self) -> None:
        self._clock = None
        if self._in_head:
            timeout = self.edge.header_timeout
            what = "headers"
        elif self._in_body:
            timeout = self.edge.body_timeout
            what = "body"
        else:
            # Nothing of a request arrived: there is no one to answer.
            self.transport.close()
            return
        self._refuse(
            RequestTimeout(f"The request's {what} did not arrive within {timeout:g} seconds.")
        )

    def _refuse(self, error: GatewayError) -> None:
        """Answer `error` and close, unless a response is under way (then only close)."""
        self._refused = True
        self._stop_clock()
        self._unset_keepalive_if_required()
        transport = self.transport
        if transport.is_closing():
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown client"
        logger.info("refused %s with %d: %s", client, error.status, error.message)
        cycle = self.cycle
        if self._in_body and cycle is not None:
            if cycle.response_started:
                transport.close()
                return
            # The application waits for the body: it sees the client as gone, and its own
            # answer, if any, is not written.
            cycle.disconnected = True
            cycle.message_event.set()
        elif cycle is not None and not cycle.response_complete:
            # A head refused while the previous request is still answered.
            transport.close()
            return
        transport.write(_response(error, self.server_state.default_headers))
        # Half-close, then drain: closing with unread bytes would reset the
        # connection, and the client could lose the answer.
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER_S, transport.close)


def _response(error: GatewayError, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    body = error.body()
    status = HTTPStatus(error.status)
    lines = [f"HTTP/1.1 {status.value} {status.phrase}".encode()]
    lines += [name + b": " + value for name, value in default_headers]
    lines += [
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
