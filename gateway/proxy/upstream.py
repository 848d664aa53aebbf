"""The one upstream HTTP client of a gateway process, and its error mapping.

Two clients can serve the hot path, chosen by `upstream_client`: the gateway's
own HTTP/1.1 client (`h1pool`, `h1client`), written for this one job and the
default since it costs a third of aiohttp's CPU per request, or aiohttp
(measured in a raw-ASGI proxy at a tenth of httpx's CPU per request).
The forwarder sees either through `HttpClient`. The aiohttp session is always
open: health and load checks use it. Both are opened in the lifespan and closed
there; nothing creates a client per request.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import aiohttp
from yarl import URL

from gateway.errors import (
    ReplicaConnectFailed,
    ReplicaConnectTimeout,
    UpstreamError,
    UpstreamUnreachable,
)
from gateway.metrics import replica_label
from gateway.proxy.h1client import UpstreamClosed
from gateway.proxy.h1pool import ConnectFailed, ConnectTimedOut, H1Pool

logger = logging.getLogger("gateway.proxy")


@dataclass(frozen=True)
class Timeouts:
    """Seconds: to connect, to the first body byte, between two reads after that, and
    for one write to the client."""

    connect: float
    first_byte: float
    idle: float
    # To write one message to the client (who may have stopped reading).
    client_write: float = 30.0


class BodyReader(Protocol):
    async def readany(self) -> bytes: ...

    async def read(self) -> bytes: ...


class UpstreamResponse(Protocol):
    """The part of a response the forwarder uses; aiohttp's `ClientResponse` is one."""

    @property
    def status(self) -> int: ...

    @property
    def raw_headers(self) -> Sequence[tuple[bytes, bytes]]: ...

    @property
    def content(self) -> BodyReader: ...

    def close(self) -> None: ...


class HttpClient(Protocol):
    def request(
        self, method: str, url: URL, body: bytes, headers: dict[str, str]
    ) -> Awaitable[UpstreamResponse]: ...


# What a response's body read raises when the replica's connection breaks, either client.
BROKEN = (aiohttp.ClientError, UpstreamClosed)
ClientKind = Literal["aiohttp", "native"]


class AiohttpClient:
    """`HttpClient` over the aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    def request(
        self, method: str, url: URL, body: bytes, headers: dict[str, str]
    ) -> Awaitable[UpstreamResponse]:
        return self._session.request(method, url, data=body, headers=headers)


class UpstreamClient:
    def __init__(
        self,
        timeouts: Timeouts,
        ssl_context: ssl.SSLContext,
        max_connections: int,
        kind: ClientKind = "aiohttp",
    ) -> None:
        self.timeouts = timeouts
        self._ssl_context = ssl_context
        self._max_connections = max_connections
        self._kind = kind
        self._session: aiohttp.ClientSession | None = None
        self._http: HttpClient | None = None
        self._pool: H1Pool | None = None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            ssl=self._ssl_context,
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Time to first byte and idle gaps are enforced per request by the
            # forwarder, which knows when the first byte has arrived.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect),
            # Bytes go to the client exactly as the replica sent them.
            auto_decompress=False,
            # Never carry one client's cookies into another client's request.
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",),
        )
        if self._kind == "native":
            self._pool = H1Pool(self._ssl_context, self.timeouts.connect, self._max_connections)
            self._http = self._pool
        else:
            self._http = AiohttpClient(self._session)

    async def close(self) -> None:
        self._http = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the upstream client is used outside the lifespan")
        return self._session

    @property
    def http(self) -> HttpClient:
        """The client that forwards requests (`upstream_client`)."""
        if self._http is None:
            raise RuntimeError("the upstream client is used outside the lifespan")
        return self._http


# What either client raises before a response started: `upstream_error` maps them.
UPSTREAM_ERRORS = (ConnectFailed, ConnectTimedOut, UpstreamClosed, aiohttp.ClientError)


def upstream_error(exc: BaseException, replica: str, request_id: str) -> UpstreamError:
    """The gateway error for one of UPSTREAM_ERRORS raised before the response started.

    The client learns what happened, never which replica: its address goes to the log.
    An `except` clause calls this, so a request that succeeds pays for no context manager.
    """
    if isinstance(exc, ConnectFailed):
        what = "TLS handshake failed" if exc.tls else "could not connect"
        return _logged(ReplicaConnectFailed, what, replica, request_id)
    if isinstance(exc, ConnectTimedOut | aiohttp.ConnectionTimeoutError):
        return _logged(ReplicaConnectTimeout, "connect timed out", replica, request_id)
    if isinstance(exc, aiohttp.ClientSSLError):
        return _logged(ReplicaConnectFailed, "TLS handshake failed", replica, request_id)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _logged(ReplicaConnectFailed, "could not connect", replica, request_id)
    return _logged(
        UpstreamUnreachable, "closed the connection before answering", replica, request_id
    )


CLIENT_MESSAGES = {
    ReplicaConnectFailed: "Could not reach a server for this model",
    ReplicaConnectTimeout: "Could not reach a server for this model in time",
    UpstreamUnreachable: "The model server closed the connection before answering",
}


def _logged(
    kind: type[UpstreamUnreachable] | type[ReplicaConnectTimeout],
    what: str,
    replica: str,
    request_id: str,
) -> UpstreamError:
    logger.warning("replica %s: %s (request %s)", replica_label(replica), what, request_id)
    return kind(f"{CLIENT_MESSAGES[kind]} (request {request_id}).")
