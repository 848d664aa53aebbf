"""Keep-alive connections per replica for the gateway's own HTTP/1.1 client.

A request takes the most recently used idle connection of its replica (the
warmest, and the least likely to have been closed by the replica's keep-alive
timeout), or opens one. Reuse is safe by construction: a connection is idle
only after its previous response was read to the end (`h1client`). A
connection found closed when the request is written carried not a byte of it,
so the request goes on a fresh connection; a connection that breaks after the
write is never retried here, since the request may have reached an engine.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque

from yarl import URL

from gateway.proxy.h1client import H1Connection, H1Response, UpstreamClosed

# Idle connections older than this are closed rather than reused: below the 5 s
# keep-alive timeout of uvicorn, which vLLM serves with, so the replica rarely closes
# a connection in the instant the gateway writes to it.
IDLE_SECONDS = 4.0


class ConnectFailed(Exception):
    """No connection to the replica: refused, unresolvable, or its TLS handshake failed."""

    def __init__(self, message: str, *, tls: bool = False) -> None:
        super().__init__(message)
        self.tls = tls


class ConnectTimedOut(Exception):
    """No connection to the replica within the connect timeout."""


class Replica:
    """The idle connections to one replica (scheme, host and port)."""

    __slots__ = ("host", "idle", "port", "prefix", "tls")

    def __init__(self, url: URL) -> None:
        self.host = url.raw_host or ""
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.tls = url.scheme == "https"
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = self.port == (443 if self.tls else 80)
        self.prefix = f"\r\nHost: {host if default else f'{host}:{self.port}'}\r\n"
        # Oldest first: a request takes the newest, a release drops the expired oldest.
        self.idle: deque[H1Connection] = deque()


class H1Pool:
    """Every replica's connections; at most `max_connections` busy at once (0: no limit)."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        connect_timeout: float,
        max_connections: int = 0,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self._idle_seconds = idle_seconds
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout
        self._replicas: dict[str, Replica] = {}
        self._slots = asyncio.Semaphore(max_connections) if max_connections else None
        self._closing = False

    async def request(
        self, method: str, url: URL, body: bytes, headers: dict[str, str]
    ) -> H1Response:
        """Send one request; its response once the head arrived (the body follows)."""
        key = f"{url.scheme}://{url.raw_authority}"
        replica = self._replicas.get(key)
        if replica is None:
            replica = self._replicas[key] = Replica(url)
        data = _encode(method, url.raw_path_qs, replica.prefix, headers, body)
        slots = self._slots
        if slots is None:
            return await self._exchange(replica, data)
        await slots.acquire()
        try:
            response = await self._exchange(replica, data)
        except BaseException:
            slots.release()
            raise
        # The slot is held until the connection goes idle or closes.
        conn = response.connection
        if conn is None:
            slots.release()
        else:
            conn.on_free = slots.release
        return response

    async def _exchange(self, replica: Replica, data: bytes) -> H1Response:
        conn, head = await self._send(replica, data)
        try:
            return await head
        except BaseException:
            conn.close()
            raise

    async def _send(
        self, replica: Replica, data: bytes
    ) -> tuple[H1Connection, asyncio.Future[H1Response]]:
        """Write DATA on an idle connection, or a new one; never twice the same bytes."""
        idle, now = replica.idle, time.monotonic()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since > self._idle_seconds:
                conn.close()
                continue
            head = conn.send(data)
            if head is not None:
                return conn, head
        conn = await self._connect(replica)
        head = conn.send(data)
        if head is None:
            raise UpstreamClosed("the replica closed a new connection at once")
        return conn, head

    async def _connect(self, replica: Replica) -> H1Connection:
        loop = asyncio.get_running_loop()
        tls = self._ssl if replica.tls else None

        def made() -> H1Connection:
            return H1Connection(lambda conn: self._idle(replica, conn))

        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    made,
                    replica.host,
                    replica.port,
                    ssl=tls,
                    server_hostname=replica.host if tls else None,
                )
        except TimeoutError as exc:
            raise ConnectTimedOut(f"connect timed out after {self._connect_timeout} s") from exc
        except ssl.SSLError as exc:
            raise ConnectFailed(f"TLS handshake failed: {exc}", tls=True) from exc
        except OSError as exc:
            raise ConnectFailed(f"could not connect: {exc}") from exc
        return conn

    def _idle(self, replica: Replica, conn: H1Connection) -> None:
        conn.free()
        if self._closing:
            conn.close()
            return
        now = conn.idle_since = time.monotonic()
        idle = replica.idle
        # Connections the replica closed, or that sat unused too long, go here rather than
        # on a timer; a pool that shrinks after a peak is pruned as it is used.
        while idle and (idle[0].closed or now - idle[0].idle_since > self._idle_seconds):
            idle.popleft().close()
        idle.append(conn)

    async def close(self) -> None:
        self._closing = True
        for replica in self._replicas.values():
            for conn in replica.idle:
                conn.close()
            replica.idle.clear()
        # Let the transports run their close callbacks before the loop goes.
        await asyncio.sleep(0)


def _encode(method: str, target: str, prefix: str, headers: dict[str, str], body: bytes) -> bytes:
    """The request's head and body, in one buffer (one write, one segment)."""
    # The client's headers passed the server's parser, but a line break would let a
    # value write a header of its own: checked once over all of them.
    given = "".join(headers) + "".join(headers.values()) + target
    if "\r" in given or "\n" in given:
        raise ValueError("a header or the target carries a line break")
    lines = [method, " ", target, " HTTP/1.1", prefix]
    for name, value in headers.items():
        lines += (name, ": ", value, "\r\n")
    if body or method not in ("GET", "HEAD"):
        lines += ("content-length: ", str(len(body)), "\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1") + body
