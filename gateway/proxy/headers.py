"""Header rules for both directions of the proxy.

To the replica: the client's credentials never leave the gateway (the
replica's own key is sent instead), hop-by-hop headers are dropped, and the
request id is the gateway's own (a client's id would become the engine's
request id, which other tenants' requests share). To the client: hop-by-hop
headers and the replica's identity (`server`, `date`) are dropped; everything
else passes unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.asgi import RawHeaders

# RFC 9110 section 7.6.1, plus the proxy-* headers and framing the gateway owns.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Client credentials in every spelling OpenAI-style clients use, and cookies.
CREDENTIALS = frozenset({b"authorization", b"api-key", b"x-api-key", b"cookie"})
# Set by the gateway or by its upstream client for the upstream connection.
REPLACED_UPSTREAM = frozenset({b"host", b"content-length", b"x-request-id", b"expect"})
DROP_TO_UPSTREAM = HOP_BY_HOP | CREDENTIALS | REPLACED_UPSTREAM
DROP_TO_CLIENT = HOP_BY_HOP | frozenset({b"server", b"date", b"x-request-id"})

REQUEST_ID = b"x-request-id"
MAX_REQUEST_ID_LENGTH = 128


def upstream_headers(
    client_headers: RawHeaders, request_id: str, authorization: str | None
) -> dict[str, str]:
    """Headers for the replica request, built from the client's."""
    headers: dict[str, str] = {}
    for name, value in client_headers:
        lowered = name.lower()
        if lowered not in DROP_TO_UPSTREAM:
            headers[lowered.decode("latin-1")] = value.decode("latin-1")
    headers["x-request-id"] = request_id
    if authorization is not None:
        headers["authorization"] = authorization
    return headers


def client_headers(upstream: Iterable[tuple[bytes, bytes]]) -> RawHeaders:
    """Headers for the client response, built from the replica's raw headers (one pass:
    a new list, which the caller may extend).

    The replica's `x-request-id` is the gateway's own id: the request context adds
    the one the client knows (its own, or the gateway's when it sent none).
    """
    return [
        (lowered, value)
        for name, value in upstream
        if (lowered := name.lower()) not in DROP_TO_CLIENT
    ]


def header_value(headers: RawHeaders, name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def valid_request_id(value: bytes) -> bool:
    """A client's request id is reused only if it is short, printable ASCII."""
    return 0 < len(value) <= MAX_REQUEST_ID_LENGTH and all(33 <= byte < 127 for byte in value)
