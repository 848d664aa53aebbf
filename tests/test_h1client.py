"""The gateway's own upstream client (`upstream_client: native`) against real servers.

The simulator for ordinary answers (content-length and streamed chunked); a
scripted server (tests/scripted_server.py) for the ones a replica sends on its
worst day: closes right after an answer or in the middle of one, broken
chunked framing, a stall. TLS is in test_h1client_tls.py, random splits and
garbage in test_h1client_parsing.py. The forwarding path as a whole runs with
this client, the default, in every gateway test; `make test-aiohttp` runs the
forwarding tests again on aiohttp.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvloop
from yarl import URL

from gateway.proxy.h1client import H1Response, UpstreamClosed
from gateway.proxy.h1pool import ConnectFailed, ConnectTimedOut, H1Pool
from gateway.settings import SettingsError, load_settings
from tests.scripted_server import STREAM_HEAD, ScriptedServer, answer, chunked, replies
from tests.servers import Process, free_port, gateway_config, run_gateway, run_simulator
from tests.test_streaming import wait_until_idle

MODEL = "sim-model"
JSON = {"content-type": "application/json"}
# Generous: the tests' servers answer in milliseconds; this only stops a hang.
LIMIT = 10.0


def run(test: Callable[[], Awaitable[None]]) -> None:
    """Run TEST on uvloop, bounded; nothing may reach the loop's exception handler (a
    protocol callback that raised, a future whose error nobody read)."""
    unhandled: list[dict[str, object]] = []

    async def bounded() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: unhandled.append(context)
        )
        async with asyncio.timeout(LIMIT):
            await test()

    uvloop.run(bounded())
    assert unhandled == []


async def fetch(pool: H1Pool, url: str, body: bytes = b"{}") -> tuple[H1Response, bytes]:
    response = await pool.request("POST", URL(url), body, dict(JSON))
    try:
        return response, await response.content.read()
    finally:
        response.close()


def pool(context: ssl.SSLContext | None = None, **options: float) -> H1Pool:
    connect = options.pop("connect_timeout", 5.0)
    return H1Pool(context or ssl.create_default_context(), connect, int(options.get("max", 0)))


@pytest.fixture(scope="module")
def sim(module_tmp: Path) -> Iterator[Process]:
    # 20 ms between tokens: a long stream is still running when its client leaves.
    with run_simulator(module_tmp, "--itl-ms", "20", model=MODEL) as process:
        yield process


def ask(stream: bool, tokens: int = 12) -> bytes:
    messages = [{"role": "user", "content": "hello"}]
    body = {"model": MODEL, "messages": messages, "max_tokens": tokens, "stream": stream}
    return json.dumps(body).encode()


def test_simulator_answers_as_it_answers_httpx(sim: Process) -> None:
    url = f"{sim.url}/v1/chat/completions"
    direct = httpx.post(url, content=ask(False), headers=JSON, timeout=10).json()
    streamed = httpx.post(url, content=ask(True), headers=JSON, timeout=10).text

    async def test() -> None:
        client = pool()
        try:
            response, body = await fetch(client, url, ask(False))
            assert response.status == 200
            assert (b"content-type", b"application/json") in response.raw_headers
            got = json.loads(body)
            assert got["choices"][0]["message"] == direct["choices"][0]["message"]
            assert got["usage"] == direct["usage"]
            response, body = await fetch(client, url, ask(True))
            assert dict(response.raw_headers)[b"transfer-encoding"] == b"chunked"
            events = body.decode().split("\n\n")
            assert len(events) == len(streamed.split("\n\n"))
            assert events[-2] == "data: [DONE]"
        finally:
            await client.close()

    run(test)


def test_a_stream_arrives_piece_by_piece(sim: Process) -> None:
    async def test() -> None:
        client = pool()
        try:
            url = URL(f"{sim.url}/v1/chat/completions")
            response = await client.request("POST", url, ask(True, tokens=50), dict(JSON))
            reads = []
            while chunk := await response.content.readany():
                reads.append(chunk)
            response.close()
            assert len(reads) > 1
            assert b"".join(reads).endswith(b"data: [DONE]\n\n")
        finally:
            await client.close()

    run(test)


def test_a_gateway_forwards_with_it_and_a_leaving_client_aborts(
    sim: Process, module_tmp: Path
) -> None:
    config = gateway_config(free_port(), {MODEL: [sim.url]}, upstream_client="native")
    with run_gateway(module_tmp, config) as gateway:
        url = f"{gateway.url}/v1/chat/completions"
        headers = {**JSON, **gateway.auth}
        answered = httpx.post(url, content=ask(False), headers=headers, timeout=10)
        assert answered.status_code == 200 and answered.json()["usage"]["completion_tokens"] == 12
        streamed = httpx.post(url, content=ask(True), headers=headers, timeout=10)
        assert streamed.text.endswith("data: [DONE]\n\n")
        # A long stream the client leaves after its first bytes: the engine stops it.
        long = json.loads(ask(True, tokens=1000))
        with httpx.stream("POST", url, json=long, headers=gateway.auth, timeout=10) as response:
            assert response.status_code == 200
            next(response.iter_bytes())
        assert wait_until_idle(sim, within_s=5) == 0


def test_the_setting_takes_only_known_clients(tmp_path: Path) -> None:
    assert load_settings(None, {"VGW_UPSTREAM_CLIENT": "native"}).upstream_client == "native"
    assert load_settings(None, {}).upstream_client == "native"
    with pytest.raises(SettingsError, match="upstream_client"):
        load_settings(None, {"VGW_UPSTREAM_CLIENT": "curl"})


def test_connections_are_reused_after_complete_answers() -> None:
    async def test() -> None:
        async with ScriptedServer(replies(answer(b'{"ok":1}'))) as server:
            client = pool()
            for _ in range(3):
                response, body = await fetch(client, server.url())
                assert (response.status, body) == (200, b'{"ok":1}')
            assert server.connections == 1
            assert len(server.requests) == 3
            await client.close()

    run(test)


def test_a_connection_idle_too_long_is_not_reused() -> None:
    """Below the replica's keep-alive timeout, so the gateway never writes to a connection
    in the instant the replica closes it."""

    async def test() -> None:
        async with ScriptedServer(replies(answer(b"{}"))) as server:
            client = H1Pool(ssl.create_default_context(), 5.0, idle_seconds=0.2)
            await fetch(client, server.url())
            await fetch(client, server.url())
            assert server.connections == 1
            await asyncio.sleep(0.3)
            await fetch(client, server.url())
            assert server.connections == 2 and len(server.requests) == 3
            await client.close()

    run(test)


def test_a_request_is_written_as_given() -> None:
    async def test() -> None:
        async with ScriptedServer(replies(answer(b"{}"))) as server:
            client = pool()
            headers = {"x-request-id": "abc", "authorization": "Bearer replica-key"}
            url = URL(f"http://127.0.0.1:{server.port}/v1/responses/r1?stream=true")
            (await client.request("GET", url, b"", headers)).close()
            response = await client.request("POST", URL(server.url()), b'{"a":1}', headers)
            await response.content.read()
            get, post = server.requests
            assert get.startswith(b"GET /v1/responses/r1?stream=true HTTP/1.1\r\n")
            assert f"Host: 127.0.0.1:{server.port}\r\n".encode() in get
            assert b"content-length" not in get
            assert b"x-request-id: abc\r\n" in post and b"authorization: Bearer" in post
            assert post.endswith(b'content-length: 7\r\n\r\n{"a":1}')
            await client.close()

    run(test)


def test_a_header_with_a_line_break_is_never_written() -> None:
    async def test() -> None:
        async with ScriptedServer(replies(answer(b"{}"))) as server:
            client = pool()
            with pytest.raises(ValueError, match="line break"):
                await client.request("POST", URL(server.url()), b"", {"x": "a\r\nevil: 1"})
            assert server.requests == []
            await client.close()

    run(test)


def test_a_connection_closed_after_an_answer_is_not_reused() -> None:
    """The replica closes after answering (its keep-alive timeout, say): the next request
    goes on a new connection, and is sent exactly once."""

    async def test() -> None:
        async with ScriptedServer(replies(answer(b"{}"), keep=False)) as server:
            client = pool()
            await fetch(client, server.url())
            await asyncio.sleep(0.1)  # the close reaches the client
            response, _ = await fetch(client, server.url())
            assert response.status == 200
            assert server.connections == 2 and len(server.requests) == 2
            await client.close()

    run(test)


def test_a_close_before_the_answer_is_an_error_and_never_retried() -> None:
    async def test() -> None:
        async with ScriptedServer(replies(keep=False)) as server:
            client = pool()
            with pytest.raises(UpstreamClosed):
                await fetch(client, server.url())
            assert len(server.requests) == 1
            await client.close()

    run(test)


@pytest.mark.parametrize(
    "partial",
    [
        answer(b"x" * 100)[:-60],
        chunked([b"data: 1\n\n", b"data: 2\n\n"])[:-5],
    ],
    ids=["content-length", "chunked"],
)
def test_a_close_mid_body_is_an_error(partial: bytes) -> None:
    async def test() -> None:
        async with ScriptedServer(replies(partial, keep=False)) as server:
            client = pool()
            response = await client.request("POST", URL(server.url()), b"", {})
            assert response.status == 200
            with pytest.raises(UpstreamClosed):
                await response.content.read()
            response.close()
            await client.close()

    run(test)


def test_a_body_without_length_ends_at_the_close() -> None:
    async def test() -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n"
        async with ScriptedServer(replies(head, b"all of ", b"it", keep=False)) as server:
            client = pool()
            _, body = await fetch(client, server.url())
            assert body == b"all of it"
            await client.close()

    run(test)


@pytest.mark.parametrize(
    "broken",
    [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello world\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 7\r\n\r\nhello",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA",
        answer(b"ok") + answer(b"unasked"),
    ],
    ids=[
        "chunk-size",
        "chunk-overrun",
        "two-lengths",
        "status-line",
        "trailing-bytes",
        "unasked-response",
    ],
)
def test_malformed_framing_is_a_clean_error(broken: bytes) -> None:
    """Never a hang, never garbage passed on as a body: a clear error, and the connection
    is never reused."""

    async def test() -> None:
        async with ScriptedServer(replies(broken)) as server:
            client = pool()
            try:
                response, body = await fetch(client, server.url())
            except UpstreamClosed as exc:
                assert "malformed" in str(exc) or "no request asked" in str(exc)
            else:
                # Only the trailing bytes cases parse: the answer is whole, its connection
                # is dropped before another request could read the extra bytes.
                assert (response.status, body) == (200, b"ok")
                await asyncio.sleep(0.05)
                await client.request("POST", URL(server.url()), b"", {})
                assert server.connections == 2
            await client.close()

    run(test)


def test_cancelling_a_read_closes_the_connection() -> None:
    """What the forwarder does when its client leaves: the replica sees the close (and vLLM
    aborts the generation)."""

    async def test() -> None:
        stall = replies(STREAM_HEAD, b"9\r\ndata: 1\n\n\r\n", keep=None)
        async with ScriptedServer(stall) as server:
            client = pool()
            response = await client.request("POST", URL(server.url()), b"", {})
            assert await response.content.readany() == b"data: 1\n\n"
            reading = asyncio.ensure_future(response.content.readany())
            await asyncio.sleep(0.05)
            reading.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reading
            response.close()
            await asyncio.wait_for(server.peer_closed.wait(), LIMIT)
            await client.close()

    run(test)


def test_connect_refused_and_connect_timeout() -> None:
    async def test() -> None:
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        client = pool(connect_timeout=0.3)
        with pytest.raises(ConnectFailed) as refused:
            await client.request("POST", URL(f"http://127.0.0.1:{port}/"), b"", {})
        assert not refused.value.tls
        # A listener whose backlog is full drops new SYNs: the connect hangs until the limit.
        with socket.socket() as full:
            full.bind(("127.0.0.1", 0))
            full.listen(0)
            address = full.getsockname()
            fillers = [socket.socket() for _ in range(3)]
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(address)
            try:
                # Linux drops a SYN to a full accept queue (no RST): the connect must time out.
                with pytest.raises(ConnectTimedOut):
                    await client.request("POST", URL(f"http://127.0.0.1:{address[1]}/"), b"", {})
            finally:
                for filler in fillers:
                    filler.close()
        await client.close()

    run(test)


def test_busy_connections_are_bounded() -> None:
    async def test() -> None:
        async with ScriptedServer(replies(answer(b"{}"), pause=0.05)) as server:
            client = H1Pool(ssl.create_default_context(), 5.0, max_connections=1)
            answers = await asyncio.gather(*(fetch(client, server.url()) for _ in range(4)))
            assert [response.status for response, _ in answers] == [200] * 4
            assert server.connections == 1
            await client.close()

    run(test)
