"""An ASGI app served over real TCP from a thread of the test process itself.

For the small HTTP servers a test writes inline (a JWKS document, an identity provider):
they need a real socket and a real HTTP server, but nothing that only a separate process
shows (signals, exit codes, memory), so a thread costs less than a process to start.
The gateway and the simulator keep running as processes (tests/servers.py).

The pattern is uvicorn's own tests': a uvicorn.Server whose `started` is polled and whose
`should_exit` ends it. The socket is bound here, before the thread starts, so that the
port is known without a race for a free one.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import uvicorn

# An ASGI 3 application: (scope, receive, send) -> None.
ASGIApp = Callable[..., Awaitable[None]]
STARTUP_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 10.0


@contextmanager
def run_server(app: ASGIApp, port: int = 0) -> Iterator[str]:
    """Serve APP on 127.0.0.1:PORT (0: any free port) until the block ends; yields its URL."""
    sock = socket.create_server(("127.0.0.1", port))
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level="warning",
        access_log=False,
        # A test that leaves a request hanging must not hold up its teardown.
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    # Not in the main thread, uvicorn installs no signal handlers: ^C still reaches pytest.
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the in-process server on port {port} did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(SHUTDOWN_TIMEOUT_S)
        sock.close()
