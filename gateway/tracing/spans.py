"""The spans of one request: a SERVER span for the request, a CLIENT span per attempt.

Spans are handed on explicitly (the request record holds the server span), never
made current: no contextvars work on the request path. Attributes follow the
OpenTelemetry HTTP and GenAI semantic conventions where one exists, `gateway.*`
otherwise. A span carries the tenant and, only with `tracing.key_id`, the key id:
never a key, a header value or a replica's credentials.

Work per request is a handful of span operations: the server span is started
when the request arrives and given its attributes when it ends; the first token
is an event stamped afterwards from the time the proxy already keeps, so no
streamed chunk touches a span.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.trace.propagation import set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from gateway.asgi import RawHeaders, Scope
from gateway.metrics import replica_label
from gateway.request_record import Outcome, RequestContext

if TYPE_CHECKING:
    from gateway.tracing.export import TraceExport

TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
# gen_ai.operation.name of each forwarded route.
OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
    # Anthropic's Messages API is a chat; counting tokens has no GenAI operation name.
    "/v1/messages": "chat",
    "/v1/responses": "chat",
}
FIRST_OUTPUT_EVENT = "gen_ai.first_token"


class RequestTracer:
    def __init__(self, export: TraceExport, *, trust_incoming: bool, key_id: bool) -> None:
        self.export = export
        self._tracer = export.tracer
        self._trust_incoming = trust_incoming
        self._key_id = key_id
        self._propagator = TraceContextTextMapPropagator()

    def start(self, scope: Scope, request_id: str) -> Span:
        """The request's SERVER span, child of the caller's if incoming ones are trusted."""
        parent = self._incoming(scope["headers"]) if self._trust_incoming else None
        method = scope["method"]
        attributes = {"http.request.method": method, "gateway.request_id": request_id}
        return self._tracer.start_span(method, parent, kind=SpanKind.SERVER, attributes=attributes)

    def _incoming(self, headers: RawHeaders) -> Context | None:
        carrier: dict[str, str] = {}
        for name, value in headers:
            lowered = name.lower()
            if lowered in (TRACEPARENT, TRACESTATE):
                carrier[lowered.decode()] = value.decode("latin-1")
        return self._propagator.extract(carrier) if carrier else None

    def finish(self, span: Span, method: str, context: RequestContext) -> None:
        """Describe the request on its span and end it: called once, as the request ends."""
        if span.is_recording():
            route = context.route
            if route is not None:
                span.update_name(f"{method} {route}")
            span.set_attributes(self._request_attributes(context))
            status = context.status
            if status >= 500:
                span.set_status(StatusCode.ERROR, context.error_type or str(status))
            outcome = context.outcome
            if outcome is not None and outcome.first_byte_at:
                span.add_event(FIRST_OUTPUT_EVENT, timestamp=_epoch_ns(outcome.first_byte_at))
        span.end()

    def _request_attributes(self, context: RequestContext) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {}
        route, status = context.route, context.status
        if route is not None:
            attributes["http.route"] = route
            operation = OPERATIONS.get(route)
            if operation is not None:
                attributes["gen_ai.operation.name"] = operation
        if status:
            attributes["http.response.status_code"] = status
        if status >= 400:
            attributes["error.type"] = context.error_type or str(status)
        if context.model is not None:
            attributes["gen_ai.request.model"] = context.model
        principal = context.principal
        if principal is not None:
            attributes["gateway.tenant"] = principal.tenant
            if self._key_id:
                attributes["gateway.key_id"] = principal.id
        if context.replica is not None:
            attributes["gateway.replica"] = replica_label(context.replica)
        outcome = context.outcome
        if outcome is not None:
            attributes.update(_outcome_attributes(outcome))
        if context.client_disconnected:
            attributes["gateway.client_disconnected"] = True
        return attributes

    def start_attempt(
        self, parent: Span, route: str, model: str, replica: str, attempt: int
    ) -> Span:
        """A CLIENT span for one attempt (1, 2, ...) at one replica; its context goes upstream.

        Named `{gen_ai.operation.name} {gen_ai.request.model}`, as GenAI client spans are."""
        context = set_span_in_context(parent)
        operation = OPERATIONS.get(route, "request")
        if not parent.is_recording():
            # Not sampled: still a real span context, so the replica continues the trace.
            return self._tracer.start_span(operation, context, kind=SpanKind.CLIENT)
        attributes: dict[str, str | int] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": model,
            "gateway.replica": replica_label(replica),
            "gateway.attempt": attempt,
        }
        return self._tracer.start_span(
            f"{operation} {model}", context, kind=SpanKind.CLIENT, attributes=attributes
        )

    def finish_attempt(self, span: Span, outcome: Outcome, failure: str | None) -> None:
        """FAILURE: the attempt's failure kind (`proxy.forward.failure_kind`), None if none."""
        if span.is_recording():
            if outcome.status:
                span.set_attribute("http.response.status_code", outcome.status)
            span.set_attribute("gateway.outcome", failure or "ok")
            if outcome.client_disconnected:
                span.set_attribute("gateway.client_disconnected", True)
            if failure is not None:
                span.set_attribute("error.type", failure)
                span.set_status(StatusCode.ERROR, failure)
        span.end()

    @staticmethod
    def trace_id(span: Span) -> str:
        return f"{span.get_span_context().trace_id:032x}"

    @staticmethod
    def propagate(span: Span, headers: dict[str, str]) -> None:
        """Put SPAN's W3C trace context on the upstream HEADERS, replacing any the caller
        sent (which, trusted, is this span's ancestor; ignored, not part of the trace)."""
        context = span.get_span_context()
        headers["traceparent"] = (
            f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
        )
        state = context.trace_state.to_header() if context.trace_state else ""
        if state:
            headers["tracestate"] = state
        else:
            headers.pop("tracestate", None)


def _outcome_attributes(outcome: Outcome) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {}
    if outcome.finish_reasons:
        attributes["gen_ai.response.finish_reasons"] = outcome.finish_reasons
    usage = outcome.usage
    if usage is not None:
        attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
    if outcome.stream_error is not None:
        attributes["gateway.stream_error"] = outcome.stream_error
    if outcome.client_disconnected:
        attributes["gateway.client_disconnected"] = True
    if outcome.client_stalled:
        attributes["gateway.client_stalled"] = True
    return attributes


def _epoch_ns(perf: float) -> int:
    """A time.perf_counter() reading as the wall-clock nanoseconds spans use."""
    return time.time_ns() - int((time.perf_counter() - perf) * 1e9)
