"""The upstream clients alone: CPU per request of aiohttp and of the gateway's own client.

    python bench/upstream_clients.py [--requests 6000] [--concurrency 64] [--rounds 3]

Each client, in turn and alternated, sends S3's requests (16 tokens, not
streamed, keep-alive) to a simulator on core 1 from this process on core 0;
the figure is this process's CPU time per request, so it is the client's own
cost, without a server in front of it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import uvloop
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import request_body
from run import GATEWAY_CORE, LOAD_CORE, MODEL, free_port, start, stop, wait_ready

from gateway.proxy.h1pool import H1Pool

HEADERS = {"content-type": "application/json"}
Send = Callable[[], Awaitable[bytes]]


async def timed(send: Send, requests: int, concurrency: int) -> float:
    """CPU µs per request of REQUESTS sends, CONCURRENCY at a time."""
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await send()

    await asyncio.gather(*(send() for _ in range(concurrency)))  # connections opened
    began = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - began) / requests * 1e6


async def with_aiohttp(url: URL, body: bytes, requests: int, concurrency: int) -> float:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

        async def send() -> bytes:
            async with session.post(url, data=body, headers=HEADERS) as response:
                return await response.read()

        return await timed(send, requests, concurrency)


async def with_native(url: URL, body: bytes, requests: int, concurrency: int) -> float:
    pool = H1Pool(ssl.create_default_context(), 5.0)

    async def send() -> bytes:
        response = await pool.request("POST", url, body, dict(HEADERS))
        try:
            return await response.content.read()
        finally:
            response.close()

    try:
        return await timed(send, requests, concurrency)
    finally:
        await pool.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(GATEWAY_CORE)})
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="vgw-clients-") as tmp:
        command = ["-m", "gateway", "simulate", "--port", str(port), "--model", MODEL]
        sim = start([*command, "--max-num-seqs", "100000"], LOAD_CORE, Path(tmp) / "sim.log")
        try:
            wait_ready(f"http://127.0.0.1:{port}/health", sim)
            url = URL(f"http://127.0.0.1:{port}/v1/chat/completions")
            body = request_body(MODEL, 16, stream=False)
            for _ in range(args.rounds):
                for name, run in (("aiohttp", with_aiohttp), ("native", with_native)):
                    cost = uvloop.run(run(url, body, args.requests, args.concurrency))
                    print(f"{name}: {cost:.0f} µs CPU per request", flush=True)
        finally:
            stop(sim)
    return 0


if __name__ == "__main__":
    sys.exit(main())
