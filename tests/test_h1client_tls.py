"""The native upstream client over TLS, with certificates made for the test (trustme)."""

from __future__ import annotations

import ssl

import pytest
import trustme

from gateway.proxy.h1pool import ConnectFailed
from tests.scripted_server import ScriptedServer, answer, replies
from tests.test_h1client import fetch, pool, run


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    return context


def test_tls_with_a_trusted_ca(ca: trustme.CA) -> None:
    async def test() -> None:
        trusting = ssl.create_default_context()
        ca.configure_trust(trusting)
        async with ScriptedServer(replies(answer(b"{}")), tls=server_context(ca)) as server:
            client = pool(trusting)
            for _ in range(2):
                response, body = await fetch(client, server.url())
                assert (response.status, body) == (200, b"{}")
            assert server.connections == 1
            await client.close()

    run(test)


def test_tls_with_an_untrusted_certificate_is_refused(ca: trustme.CA) -> None:
    async def test() -> None:
        async with ScriptedServer(replies(answer(b"{}")), tls=server_context(ca)) as server:
            client = pool()
            with pytest.raises(ConnectFailed) as refused:
                await fetch(client, server.url())
            assert refused.value.tls
            assert server.requests == []
            await client.close()

    run(test)
