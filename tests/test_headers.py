"""Header rules, both directions (pure functions: no server needed to show them)."""

from __future__ import annotations

from gateway.proxy.headers import client_headers, upstream_headers


def test_upstream_gets_no_client_credentials_or_hop_by_hop_headers() -> None:
    client = [
        (b"host", b"gateway.example.com"),
        (b"Authorization", b"Bearer client-key"),
        (b"x-api-key", b"client-key"),
        (b"api-key", b"client-key"),
        (b"cookie", b"session=1"),
        (b"connection", b"keep-alive"),
        (b"keep-alive", b"timeout=5"),
        (b"te", b"trailers"),
        (b"transfer-encoding", b"chunked"),
        (b"proxy-authorization", b"Basic eA=="),
        (b"upgrade", b"h2c"),
        (b"content-length", b"12"),
        (b"x-request-id", b"from-client"),
        (b"content-type", b"application/json"),
        (b"user-agent", b"OpenAI/Python 1.0"),
        (b"x-stainless-lang", b"python"),
    ]
    sent = upstream_headers(client, "rid-1", "Bearer replica-key")
    assert sent == {
        "content-type": "application/json",
        "user-agent": "OpenAI/Python 1.0",
        "x-stainless-lang": "python",
        "x-request-id": "rid-1",
        "authorization": "Bearer replica-key",
    }


def test_upstream_without_a_replica_key_gets_no_authorization() -> None:
    sent = upstream_headers([(b"authorization", b"Bearer client-key")], "rid", None)
    assert "authorization" not in sent


def test_client_gets_no_hop_by_hop_or_replica_identity_headers() -> None:
    upstream = [
        (b"Content-Type", b"text/event-stream; charset=utf-8"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"keep-alive"),
        (b"Server", b"uvicorn"),
        (b"Date", b"Sun, 29 Nov 2026 00:00:00 GMT"),
        (b"X-Request-Id", b"replica-made"),
        (b"X-Custom", b"kept"),
    ]
    # The request context adds the id the client knows.
    assert client_headers(upstream) == [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"x-custom", b"kept"),
    ]
