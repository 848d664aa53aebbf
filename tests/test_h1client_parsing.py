"""The native upstream client's response reading, over random inputs from a real socket.

However a valid response is cut into writes, the client reads the same status,
headers and body. Random bytes from a replica end in a clean `UpstreamClosed`
or some response, never a hang and never another exception.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from gateway.proxy.h1client import UpstreamClosed
from gateway.proxy.h1pool import H1Pool
from tests.scripted_server import ScriptedServer, answer, chunked, replies
from tests.test_h1client import LIMIT, run

EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BODY_PARTS = st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=6)


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({point % (len(data) + 1) for point in cuts} | {0, len(data)})
    return [data[start:end] for start, end in itertools.pairwise(points)]


async def read_all(
    data: list[bytes], *, keep: bool
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    async with ScriptedServer(replies(*data, keep=keep, pause=0.001)) as server:
        client = H1Pool(ssl.create_default_context(), 5.0)
        try:
            response = await client.request("POST", URL(server.url()), b"{}", {})
            try:
                return response.status, list(response.raw_headers), await response.content.read()
            finally:
                response.close()
        finally:
            await client.close()


@EXAMPLES
@given(
    parts=BODY_PARTS, cuts=st.lists(st.integers(min_value=0), max_size=8), streamed=st.booleans()
)
def test_any_split_of_a_valid_response_reads_the_same(
    parts: list[bytes], cuts: list[int], streamed: bool
) -> None:
    whole = chunked(parts) if streamed else answer(b"".join(parts))

    async def test() -> None:
        status, headers, body = await read_all(cut(whole, cuts), keep=True)
        assert status == 200
        assert body == b"".join(parts)
        names = [name for name, _ in headers]
        assert (b"transfer-encoding" if streamed else b"content-length") in names

    run(test)


@EXAMPLES
@given(
    head=st.sampled_from(
        [b"", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n"]
    ),
    garbage=st.binary(max_size=300),
    cuts=st.lists(st.integers(min_value=0), max_size=4),
)
def test_garbage_ends_cleanly(head: bytes, garbage: bytes, cuts: list[int]) -> None:
    async def test() -> None:
        try:
            async with asyncio.timeout(LIMIT / 2):
                await read_all(cut(head + garbage, cuts), keep=False)
        except UpstreamClosed:
            pass

    run(test)
