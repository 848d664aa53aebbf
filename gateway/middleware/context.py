"""Per-request context: the request id, and the access log line written at the end.

This middleware is the outermost on the request path, so every response,
the error boundary's included, carries `X-Request-Id` and is logged once.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from gateway.access_log import AccessLog
from gateway.asgi import ASGIApp, Message, Receive, Scope, Send
from gateway.auth.principal import Principal
from gateway.proxy.forward import Outcome
from gateway.proxy.headers import REQUEST_ID, header_value, valid_request_id

SCOPE_KEY = "vgw.context"


@dataclass(slots=True)
class RequestContext:
    request_id: str
    started: float
    status: int = 0
    route: str | None = None
    model: str | None = None
    replica: str | None = None
    client_disconnected: bool = False
    outcome: Outcome | None = None
    principal: Principal | None = None


def context_of(scope: Scope) -> RequestContext:
    context: RequestContext = scope[SCOPE_KEY]
    return context


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, access_log: AccessLog) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = header_value(scope["headers"], REQUEST_ID)
        request_id = (
            given.decode("ascii") if given and valid_request_id(given) else os.urandom(16).hex()
        )
        context = RequestContext(request_id, time.perf_counter())
        scope[SCOPE_KEY] = context
        id_header = (REQUEST_ID, request_id.encode())

        async def send_with_context(message: Message) -> None:
            if message["type"] == "http.response.start":
                context.status = message["status"]
                headers = message.setdefault("headers", [])
                if all(name != REQUEST_ID for name, _ in headers):
                    headers.append(id_header)
            await send(message)

        try:
            await self.app(scope, receive, send_with_context)
        finally:
            if self.access_log.enabled:
                self.access_log.write(_access_fields(scope, context))


def _access_fields(scope: Scope, context: RequestContext) -> dict[str, object]:
    outcome = context.outcome
    return {
        "request_id": context.request_id,
        "method": scope["method"],
        "principal": context.principal.id if context.principal else None,
        "tenant": context.principal.tenant if context.principal else None,
        "path": scope["path"],
        "model": context.model,
        "replica": context.replica,
        "status": context.status,
        "duration_ms": round((time.perf_counter() - context.started) * 1000, 3),
        "bytes": outcome.bytes_sent if outcome else 0,
        "prompt_tokens": outcome.usage.prompt_tokens if outcome and outcome.usage else None,
        "completion_tokens": outcome.usage.completion_tokens if outcome and outcome.usage else None,
        "client_disconnected": context.client_disconnected
        or bool(outcome and outcome.client_disconnected),
        "stream_error": outcome.stream_error if outcome else None,
    }
