"""The record of one request: what the middleware opens, the proxy fills and the log reads.

It lives below both (`middleware.context` writes it into the scope and logs it;
`proxy` fills it in), so neither has to import the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.asgi import Scope
from gateway.principal import Principal
from gateway.usage.records import TokenUsage

if TYPE_CHECKING:
    from opentelemetry.trace import Span

SCOPE_KEY = "vgw.context"


@dataclass(slots=True)
class Outcome:
    """What happened to one forwarded request, for logs and metrics."""

    status: int = 0
    bytes_sent: int = 0
    client_disconnected: bool = False
    # The client stopped reading for longer than the write timeout: the gateway ended it.
    client_stalled: bool = False
    stream_error: str | None = None
    # Ended by the shutdown's grace, not by the replica or the client.
    drained: bool = False
    usage: TokenUsage | None = None
    # The choices' finish reasons, read only for a traced request (else None).
    finish_reasons: list[str] | None = None
    # time.perf_counter() readings: request sent upstream, its first byte back, first byte
    # sent to the client.
    upstream_sent_at: float = 0.0
    upstream_first_byte_at: float = 0.0
    first_byte_at: float = 0.0
    # Streamed chunks sent, and the gateway's own time spent on them.
    chunks: int = 0
    chunk_seconds: float = 0.0


@dataclass(slots=True)
class RequestContext:
    # Minted by the gateway for every request: the id the replica and the log see.
    request_id: str
    started: float
    # The client's own X-Request-Id, if it sent a valid one: echoed back and logged.
    client_request_id: str | None = None
    status: int = 0
    route: str | None = None
    model: str | None = None
    # The model is one the gateway serves: only then is it a metrics label.
    known_model: bool = False
    replica: str | None = None
    client_disconnected: bool = False
    outcome: Outcome | None = None
    principal: Principal | None = None
    # The error the gateway answered with: its code, or its class when it has none.
    error_type: str | None = None
    # The request's server span, when tracing is on.
    span: Span | None = None


def context_of(scope: Scope) -> RequestContext:
    context: RequestContext = scope[SCOPE_KEY]
    return context
