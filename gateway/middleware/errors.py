"""The error boundary: every refusal leaves in OpenAI's error shape, never a traceback.

On Anthropic's Messages routes the shape is Anthropic's (`proxy.anthropic`), chosen
from the path so that even a refusal before the route is matched (405, 401) has it.
"""

from __future__ import annotations

import logging

from gateway.asgi import ASGIApp, Receive, Scope, Send, send_bytes
from gateway.auth.errors import AuthError
from gateway.errors import GatewayError, error_body
from gateway.metrics import Metrics
from gateway.proxy import anthropic
from gateway.proxy.routes import ANTHROPIC_PATHS
from gateway.request_record import context_of

logger = logging.getLogger("gateway.errors")


class ErrorBoundary:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        except GatewayError as exc:
            if isinstance(exc, AuthError):
                self.metrics.auth_failures.labels(exc.reason).inc()
            context = context_of(scope)
            context.error_type = exc.code or type(exc).__name__
            if context.status:
                raise
            headers = [(name.encode(), value.encode()) for name, value in exc.headers.items()]
            if scope["path"] in ANTHROPIC_PATHS:
                body = anthropic.gateway_error_body(exc)
            else:
                body = exc.body()
            await send_bytes(send, exc.status, body, headers)
        except Exception:
            # Unexpected: answer 500 if we still can, then let the server log the traceback.
            context = context_of(scope)
            context.error_type = "internal_error"
            if not context.status:
                message = "The gateway failed to handle this request."
                if scope["path"] in ANTHROPIC_PATHS:
                    body = anthropic.error_body(500, message)
                else:
                    body = error_body(message, "server_error", None, None)
                await send_bytes(send, 500, body)
            raise
