"""The load generator: N concurrent clients, each timing its requests chunk by chunk.

It parses as little as it can (byte searches, no JSON) so that its own CPU
stays small next to the simulator it shares a core with; its CPU time is
reported so a saturated client is never mistaken for a slow gateway.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp

CONTENT_MARKERS = (b'"content":"', b'"text":"')
EMPTY_MARKERS = (b'"content":""', b'"text":""')


@dataclass
class Sample:
    """One request as its client saw it. Times are seconds since the request was sent."""

    ok: bool
    ttft: float | None = None
    e2e: float = 0.0
    gaps: list[float] = field(default_factory=list)
    chunks: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Load:
    url: str
    path: str
    body: bytes
    stream: bool
    requests: int
    concurrency: int
    # Clients start evenly over this many seconds: real traffic does not arrive as
    # one instantaneous burst of `concurrency` requests.
    ramp_s: float = 0.0
    api_key: str | None = None
    # All clients wait at a barrier before each request: `concurrency` requests leave
    # in the same instant, round after round (the burst scenario).
    burst: bool = False


def request_body(model: str, tokens: int, stream: bool) -> bytes:
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Benchmark the gateway, please."}],
            "max_tokens": tokens,
            "stream": stream,
        }
    ).encode()


def _is_content(line: bytes) -> bool:
    return any(marker in line for marker in CONTENT_MARKERS) and not any(
        marker in line for marker in EMPTY_MARKERS
    )


async def _one(session: aiohttp.ClientSession, load: Load) -> Sample:
    started = time.perf_counter()
    headers = {"content-type": "application/json"}
    if load.api_key:
        headers["authorization"] = f"Bearer {load.api_key}"
    try:
        async with session.post(load.url + load.path, data=load.body, headers=headers) as reply:
            if reply.status != 200:
                return Sample(ok=False, error=f"HTTP {reply.status}")
            if not load.stream:
                await reply.read()
                now = time.perf_counter() - started
                return Sample(ok=True, ttft=now, e2e=now, chunks=1)
            return await _read_stream(reply, started)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Sample(ok=False, error=type(exc).__name__)


async def _read_stream(reply: aiohttp.ClientResponse, started: float) -> Sample:
    sample = Sample(ok=False)
    last = 0.0
    async for line in reply.content:
        if not line.startswith(b"data: "):
            continue
        if line.startswith(b"data: [DONE]"):
            sample.ok = True
            break
        if not _is_content(line):
            continue
        now = time.perf_counter() - started
        if sample.ttft is None:
            sample.ttft = now
        else:
            sample.gaps.append(now - last)
        last = now
        sample.chunks += 1
    sample.e2e = time.perf_counter() - started
    if not sample.ok:
        sample.error = "stream ended without [DONE]"
    return sample


async def run_load(load: Load) -> tuple[list[Sample], float]:
    """Run the load; return the samples and the wall time it took."""
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=600)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(load.requests):
        queue.put_nowait(index)
    samples: list[Sample] = []

    barrier = asyncio.Barrier(load.concurrency) if load.burst else None

    async def client(session: aiohttp.ClientSession, index: int) -> None:
        if barrier is not None:
            for _ in range(load.requests // load.concurrency):
                await barrier.wait()
                samples.append(await _one(session, load))
            return
        if load.ramp_s:
            await asyncio.sleep(load.ramp_s * index / load.concurrency)
        while not queue.empty():
            queue.get_nowait()
            samples.append(await _one(session, load))

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session, index) for index in range(load.concurrency)))
        wall = time.perf_counter() - started
    return samples, wall
