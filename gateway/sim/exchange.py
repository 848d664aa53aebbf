"""One HTTP exchange at the ASGI level: sending, dropping and noticing the client leave."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Mapping, MutableMapping
from typing import Any

# The ASGI callable's types, spelled as starlette.types spells them.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = Mapping[bytes, bytes]
# A route's handler: the ASGI triple plus the request headers, already collected.
Handler = Callable[[Scope, Receive, Send, Headers], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8")]
# How long a dropped connection may take to be noticed by the server.
_DROP_SETTLE_S = 1.0


class ConnectionDropped(Exception):
    """The simulator closed the connection on purpose (the drop-after fault)."""


class ClientGone(Exception):
    """The client disconnected while the request body was being read."""


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_response(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    head = [(b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class Exchange:
    """The response side of one generation request, watched for the client leaving.

    `client_gone` is set by the disconnect watcher; `complete` is set just
    before the last body message, so a disconnect noticed after that is not
    an abort; `dropped` is set once the simulator closed the connection itself.
    """

    __slots__ = ("_send", "client_gone", "complete", "dropped")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.client_gone = False
        self.complete = False
        self.dropped = False

    async def respond(self, status: int, body: bytes) -> None:
        self.complete = True
        await send_response(self._send, status, body, JSON_HEADERS)

    async def start_stream(self) -> None:
        await self._send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})

    async def send_event(self, data: bytes) -> None:
        # One event per body message, so each reaches the client as its own read.
        await self._send({"type": "http.response.body", "body": data, "more_body": True})

    async def end_stream(self, data: bytes) -> None:
        self.complete = True
        await self._send({"type": "http.response.body", "body": data, "more_body": False})

    def drop(self) -> ConnectionDropped:
        """Close the connection without ending the response; return the error to raise.

        uvicorn's send callable is a bound method of its request-response
        cycle, which holds the transport. Closing it writes nothing more, so
        a chunked body stays unterminated and an unstarted response stays
        empty. Servers without that shape get the exception, which makes
        them abort the connection.
        """
        transport = getattr(getattr(self._send, "__self__", None), "transport", None)
        close = getattr(transport, "close", None)
        if callable(close):
            close()
            self.dropped = True
        return ConnectionDropped()


async def run_watched(
    receive: Receive, exchange: Exchange, work: Coroutine[Any, Any, None]
) -> None:
    """Run WORK, cancelling it the moment the client disconnects (vLLM aborts then too).

    An `OSError` from sending also means the client is gone. A deliberate drop
    waits until the server has seen the connection close, so it does not
    complain that the response was left unfinished.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_watch(receive, exchange, task))
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if not exchange.client_gone or (current is not None and current.cancelling()):
            raise
    except OSError:
        exchange.client_gone = True
    except ConnectionDropped:
        if not exchange.dropped:
            raise
        await asyncio.wait({watcher}, timeout=_DROP_SETTLE_S)
    finally:
        watcher.cancel()


async def _watch(receive: Receive, exchange: Exchange, task: asyncio.Future[None]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    if not exchange.complete and not exchange.dropped:
        exchange.client_gone = True
        task.cancel()
