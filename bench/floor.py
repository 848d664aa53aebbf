"""The floor under the gateway's per-request cost: a forwarder with no policy at all.

    python bench/run.py --scenarios S3 --variant floor-uvicorn   (or floor-lean)

`bare_forwarder` reads a request's body, forwards it with the gateway's own
upstream client (`h1pool`) to the first replica of the config's first model,
and streams the answer back with the replica's status and headers (hop-by-hop
ones dropped). Nothing else: no authentication, limits, quotas, usage, metrics,
access log, request contract, routing or error shaping. `serve_variant.py`
serves it with uvicorn configured as `vllm-gateway serve` configures it
(`floor-uvicorn`) or with the lean protocol prototype (`floor-lean`).

Its CPU per request in S3 is what a Python gateway built from these parts pays
before its first policy: the part of the gateway's figure no trimming of the
gateway's own code can remove.
"""

from __future__ import annotations

import ssl
from typing import Any

from yarl import URL

from gateway.asgi import ASGIApp, Receive, Scope, Send, send_bytes
from gateway.proxy.h1pool import H1Pool

DROPPED = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"date", b"server"})
NOT_FOUND = b'{"error":{"message":"not found","type":"invalid_request_error"}}'


def bare_forwarder(replica: str) -> ASGIApp:
    """An ASGI app that forwards every POST to REPLICA and answers anything else 404."""
    pool = H1Pool(ssl.create_default_context(), connect_timeout=5.0)
    base = URL(replica)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, pool)
            return
        if scope["method"] != "POST":
            await send_bytes(send, 404, NOT_FOUND)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {"content-type": "application/json"}
        response = await pool.request("POST", base.with_path(scope["path"]), body, headers)
        try:
            kept = [(k, v) for k, v in response.raw_headers if k.lower() not in DROPPED]
            await send({"type": "http.response.start", "status": response.status, "headers": kept})
            while chunk := await response.readany():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            response.close()

    return app


async def _lifespan(receive: Receive, send: Send, pool: H1Pool) -> None:
    message: Any = await receive()
    while True:
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await pool.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        message = await receive()
