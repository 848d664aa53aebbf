"""The one upstream HTTP client of a gateway process, and its error mapping.

aiohttp serves the hot path: measured in a raw-ASGI proxy it cost a tenth of
httpx's CPU per request. The session is opened in the lifespan and closed
there; nothing creates a client per request.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import aiohttp

from gateway.errors import (
    ReplicaConnectFailed,
    ReplicaConnectTimeout,
    UpstreamError,
    UpstreamUnreachable,
)
from gateway.metrics import replica_label

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


class UpstreamClient:
    def __init__(
        self, timeouts: Timeouts, ssl_context: ssl.SSLContext, max_connections: int
    ) -> None:
        self.timeouts = timeouts
        self._ssl_context = ssl_context
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

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

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the upstream client is used outside the lifespan")
        return self._session


@contextmanager
def map_upstream_errors(replica: str, request_id: str) -> Iterator[None]:
    """Translate aiohttp's errors before the response started into gateway errors.

    The client learns what happened, never which replica: its address goes to the log.
    """
    try:
        yield
    except aiohttp.ClientSSLError as exc:
        raise _logged(ReplicaConnectFailed, "TLS handshake failed", replica, request_id) from exc
    except aiohttp.ClientConnectorError as exc:
        raise _logged(ReplicaConnectFailed, "could not connect", replica, request_id) from exc
    except aiohttp.ConnectionTimeoutError as exc:
        raise _logged(ReplicaConnectTimeout, "connect timed out", replica, request_id) from exc
    except aiohttp.ClientError as exc:
        raise _logged(
            UpstreamUnreachable, "closed the connection before answering", replica, request_id
        ) from exc


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
