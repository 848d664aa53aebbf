"""Reading and checking the client's JSON body before anything goes upstream."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.asgi import Receive
from gateway.errors import InvalidRequest, PayloadTooLarge

# The client may still be sending: the connection is not worth keeping.
_CLOSE = {"connection": "close"}


async def read_body(receive: Receive, limit: int, declared_length: int | None) -> bytes:
    """The whole request body, refusing it as soon as it is known to exceed `limit`
    (chunked bodies are counted as they arrive). A client trickling its body is cut
    off by the listener's `edge.body_timeout` (gateway.edge): this then sees it gone."""
    if declared_length is not None and declared_length > limit:
        raise PayloadTooLarge(_too_large(limit), headers=_CLOSE)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(_too_large(limit), headers=_CLOSE)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> str:
    return f"The request body is larger than this gateway's limit of {limit} bytes."


class ClientGone(Exception):
    """The client disconnected while sending its request."""


def parse_request(body: bytes) -> tuple[dict[str, Any], str]:
    """The parsed JSON object and its `model`; the bytes forwarded stay the client's own."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from exc
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = payload.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter.", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("The model parameter must be a non-empty string.", param="model")
    return payload, model
