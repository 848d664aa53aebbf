"""A TCP proxy for the tests that fails the way networks do: it freezes (half-open), resets,
or loses the answer to a request the server did receive."""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import threading
from collections.abc import Callable

from tests.servers import free_port


class FaultProxy:
    """Forwards 127.0.0.1:`port` to `target_port`, on its own event loop in a thread."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._flowing = asyncio.Event()
        self._down = False
        self._sockets: set[asyncio.StreamWriter] = set()
        self._lose_reply_to: bytes | None = None
        # Every byte clients sent through, in order: what the target received.
        self.forwarded = bytearray()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()
            self._reset_all()
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def header_values(self, name: bytes) -> list[bytes]:
        """Each value of header NAME in the requests forwarded so far (HTTP/1.1, in order)."""
        pattern = re.compile(rb"^" + re.escape(name) + rb":[ \t]*(.*?)\r$", re.I | re.M)
        return pattern.findall(bytes(self.forwarded))

    def freeze(self) -> None:
        """Stop forwarding both ways; every socket stays open (a half-open network)."""
        self._call(self._flowing.clear)

    def drop(self) -> None:
        """Reset every connection, and refuse new ones until `heal`."""

        def down() -> None:
            self._down = True
            self._reset_all()

        self._call(down)

    def lose_reply_to(self, request: bytes) -> None:
        """Once: forward the next client read holding REQUEST, then reset that connection
        when the server answers, instead of passing the answer on. The server did the
        work; the client only sees its connection drop."""

        def arm() -> None:
            self._lose_reply_to = request

        self._call(arm)

    def heal(self) -> None:
        def up() -> None:
            self._down = False
            self._flowing.set()

        self._call(up)

    def _call(self, action: Callable[[], None]) -> None:
        async def run() -> None:
            action()

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    async def _listen(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._down:
            _reset(client_w)
            return
        self._sockets.add(client_w)
        upstream_w: asyncio.StreamWriter | None = None
        try:  # closed however it ends, a `stop` cancelling it half-way included
            await self._flowing.wait()  # frozen: the connection is accepted and goes nowhere
            try:
                upstream_r, upstream_w = await asyncio.open_connection(
                    "127.0.0.1", self.target_port
                )
            except OSError:
                _reset(client_w)
                return
            self._sockets.add(upstream_w)
            doomed = asyncio.Event()  # set once this connection's next answer is to be lost
            await asyncio.gather(
                self._pump(client_r, upstream_w, self.forwarded, doomed),
                self._pump(upstream_r, client_w, doomed=doomed),
                return_exceptions=True,
            )
        finally:
            for writer in (client_w, upstream_w):
                if writer is not None:
                    self._sockets.discard(writer)
                    writer.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        record: bytearray | None = None,
        doomed: asyncio.Event | None = None,
    ) -> None:
        try:
            while True:
                await self._flowing.wait()  # unread bytes wait in the kernel's buffers
                data = await reader.read(65536)
                if not data:
                    break
                await self._flowing.wait()
                if record is not None:
                    record += data
                    if self._lose_reply_to is not None and self._lose_reply_to in data:
                        self._lose_reply_to = None
                        assert doomed is not None
                        doomed.set()
                elif doomed is not None and doomed.is_set():
                    _reset(writer)  # the answer is dropped with the connection
                    break
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def _reset_all(self) -> None:
        for writer in list(self._sockets):
            _reset(writer)
        self._sockets.clear()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST, as a crashed middlebox would."""
    if writer.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
