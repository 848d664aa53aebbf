"""Per-request context: the request id, and the access log line written at the end.

This middleware is the outermost on the request path, so every response,
the error boundary's included, carries `X-Request-Id` and is logged once.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from prometheus_client import Gauge

from gateway.access_log import AccessLog
from gateway.asgi import ASGIApp, Message, Receive, Scope, Send
from gateway.metrics import Metrics, replica_label
from gateway.proxy.headers import REQUEST_ID, header_value, valid_request_id
from gateway.proxy.routes import Route
from gateway.request_record import SCOPE_KEY, RequestContext

if TYPE_CHECKING:
    from gateway.tracing.spans import RequestTracer

# Paths as metric labels: the routes clients may use; anything else is "other".
ROUTE_LABELS = {route.value: route.value for route in Route if route is not Route.MODEL} | {
    "/healthz": "/healthz",
    "/readyz": "/readyz",
    "/metrics": "/metrics",
}


ID_BLOCK = 256


class RequestIds:
    """Request ids: 16 random bytes from the OS, as hex. The bytes are read in blocks, one
    `getrandom` call per ID_BLOCK ids instead of one per request."""

    __slots__ = ("_at", "_block")

    def __init__(self) -> None:
        self._block = b""
        self._at = 0

    def new(self) -> str:
        at = self._at
        if at >= len(self._block):
            self._block, at = os.urandom(16 * ID_BLOCK), 0
        self._at = at + 16
        return self._block[at : at + 16].hex()


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        access_log: AccessLog,
        metrics: Metrics,
        tracer: RequestTracer | None = None,
    ) -> None:
        self.app = app
        self.access_log = access_log
        self.metrics = metrics
        self.tracer = tracer
        # A route's path -> its in-flight gauge, made on the route's first request (never
        # before: a series at 0 would show on /metrics).
        self._in_flight: dict[str, Gauge] = {}
        self._ids = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = header_value(scope["headers"], REQUEST_ID)
        echoed = given if given and valid_request_id(given) else None
        request_id = self._ids.new()
        context = RequestContext(request_id, time.perf_counter())
        if echoed is not None:
            context.client_request_id = echoed.decode("ascii")
        scope[SCOPE_KEY] = context
        tracer = self.tracer
        if tracer is not None:
            context.span = tracer.start(scope, request_id)
        id_header = (REQUEST_ID, echoed or request_id.encode())

        async def send_with_context(message: Message) -> None:
            if message["type"] == "http.response.start":
                context.status = message["status"]
                headers = message.setdefault("headers", [])
                for name, _ in headers:
                    if name == REQUEST_ID:
                        break
                else:
                    headers.append(id_header)
            await send(message)

        in_flight = self._in_flight.get(scope["path"])
        if in_flight is None:
            in_flight = self._gauge(scope["path"])
        in_flight.inc()
        try:
            await self.app(scope, receive, send_with_context)
        finally:
            in_flight.dec()
            record_request(self.metrics, context, time.perf_counter())
            span = context.span
            if tracer is not None and span is not None:
                # The one end of the request's span: after the last byte, however it ended.
                tracer.finish(span, scope["method"], context)
            if self.access_log.enabled:
                fields = _access_fields(scope, context)
                if tracer is not None and span is not None:
                    fields["trace_id"] = tracer.trace_id(span)
                self.access_log.write(fields)

    def _gauge(self, path: str) -> Gauge:
        route = ROUTE_LABELS.get(path)
        if route is None:
            # Not kept by path: made-up paths must not grow the dict.
            return self.metrics.child(self.metrics.in_flight, "other")
        gauge = self._in_flight[path] = self.metrics.child(self.metrics.in_flight, route)
        return gauge


def record_request(metrics: Metrics, context: RequestContext, now: float) -> None:
    """The request's line in every per-request metric."""
    principal, outcome = context.principal, context.outcome
    model = context.model if context.known_model and context.model else ""
    route = context.route or "other"
    tenant = principal.tenant if principal else ""
    labels = [model, route, str(context.status), tenant]
    if metrics.key_label:
        labels.append(principal.id if principal else "")
    series = metrics.request_series(tuple(labels))
    series.requests.inc()
    series.duration.observe(now - context.started)
    if context.client_disconnected or (outcome and outcome.client_disconnected):
        series.client_disconnects.inc()
    if outcome is None:
        return
    if outcome.client_stalled:
        series.client_stalls.inc()
    if outcome.first_byte_at:
        series.ttft.observe(outcome.first_byte_at - context.started)
    if outcome.upstream_sent_at:
        series.overhead.observe(outcome.upstream_sent_at - context.started)
    if outcome.chunks:
        series.chunks.inc(outcome.chunks)
        series.chunk_overhead.inc(outcome.chunk_seconds)
    if outcome.usage is not None:
        series.prompt_tokens.inc(outcome.usage.prompt_tokens)
        series.completion_tokens.inc(outcome.usage.completion_tokens)


def _access_fields(scope: Scope, context: RequestContext) -> dict[str, object]:
    outcome = context.outcome
    return {
        "request_id": context.request_id,
        "client_request_id": context.client_request_id,
        "method": scope["method"],
        "principal": context.principal.id if context.principal else None,
        "tenant": context.principal.tenant if context.principal else None,
        "path": scope["path"],
        "model": context.model,
        "replica": replica_label(context.replica) if context.replica else None,
        "status": context.status,
        "duration_ms": round((time.perf_counter() - context.started) * 1000, 3),
        "ttft_ms": round((outcome.first_byte_at - context.started) * 1000, 3)
        if outcome and outcome.first_byte_at
        else None,
        "bytes": outcome.bytes_sent if outcome else 0,
        "prompt_tokens": outcome.usage.prompt_tokens if outcome and outcome.usage else None,
        "completion_tokens": outcome.usage.completion_tokens if outcome and outcome.usage else None,
        "client_disconnected": context.client_disconnected
        or bool(outcome and outcome.client_disconnected),
        "client_stalled": bool(outcome and outcome.client_stalled),
        "stream_error": outcome.stream_error if outcome else None,
    }
