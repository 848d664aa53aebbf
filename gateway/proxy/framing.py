"""How a route's answers carry their usage and how a failed stream ends: OpenAI's or Anthropic's.

`Exchange` is given one `Framing` per request, so forwarding stays one code
path for every route while the bytes it reads and the last event it writes
follow the route's own protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway import errors
from gateway.errors import GatewayError
from gateway.proxy import anthropic
from gateway.proxy.anthropic_usage import MessagesStreamUsage, messages_body_usage
from gateway.proxy.pooling import embed_v2_body_usage
from gateway.proxy.routes import Route
from gateway.proxy.usage_scan import BodyUsage, StreamUsage
from gateway.usage.records import TokenUsage


class StreamScanner(Protocol):
    usage: TokenUsage | None

    def feed(self, chunk: bytes) -> bytes: ...

    def end(self) -> bytes: ...


class StreamScannerFactory(Protocol):
    def __call__(self, *, strip: bool, reasons: list[str] | None = None) -> StreamScanner: ...


@dataclass(frozen=True, slots=True)
class Framing:
    stream_usage: StreamScannerFactory
    body_usage: Callable[[], BodyUsage]
    error_event: Callable[[GatewayError], bytes]


OPENAI = Framing(StreamUsage, BodyUsage, errors.stream_error_event)
ANTHROPIC = Framing(MessagesStreamUsage, messages_body_usage, anthropic.stream_error_event)
# Cohere's v2 embed: OpenAI's framing, its usage in `meta.billed_units`.
EMBED_V2 = Framing(StreamUsage, embed_v2_body_usage, errors.stream_error_event)


def framing_of(route: Route) -> Framing:
    if route.anthropic:
        return ANTHROPIC
    return EMBED_V2 if route is Route.EMBED_V2 else OPENAI
