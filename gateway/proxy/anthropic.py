"""Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`), as vLLM serves it.

The route goes through the same pipeline as chat; what differs lives here:

- the request contract: `max_tokens` is required (Anthropic's API has no
  default) and checked as chat's counts are (`"4000"`, `true`, `2.5` refused
  naming the field, `2000.0` normalised); `stream` a boolean; `messages` a
  non-empty array; `system` a string, an array of blocks or null;
- the key's `max_tokens` cap: clamped or refused as on chat; the
  reservation is the prompt estimate plus `max_tokens`. A token count
  reserves only its prompt estimate and is never billed (nothing is
  generated);
- the error shape Anthropic's SDKs read, `{"type": "error", "error":
  {"type", "message"}}`, with the type its status stands for, and a failed
  stream's last event, `event: error` (vLLM's own framing on this route:
  `event: <type>\\ndata: <json>\\n\\n`, no `[DONE]`).

Usage is read by `anthropic_usage`; `x-api-key` is read by the handler (as a
credential, never forwarded: `headers.CREDENTIALS`).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

import orjson

from gateway.errors import GatewayError, InvalidRequest
from gateway.proxy.contract import BYTES_PER_TOKEN, check_bool, check_count, check_messages, kind_of
from gateway.proxy.request_edit import EditedRequest, TokenPolicy
from gateway.proxy.routes import Route

# Anthropic's error types by status (docs.anthropic.com/en/api/errors). The status is
# kept as the gateway answers it on every route; only the body's words change.
_ERROR_TYPES = {
    HTTPStatus.UNAUTHORIZED: "authentication_error",
    HTTPStatus.FORBIDDEN: "permission_error",
    HTTPStatus.NOT_FOUND: "not_found_error",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "request_too_large",
    HTTPStatus.TOO_MANY_REQUESTS: "rate_limit_error",
    # Every 503 the gateway makes (shedding, no healthy replica, draining, limiter down)
    # says "try again shortly": Anthropic's word for that is overloaded_error.
    HTTPStatus.SERVICE_UNAVAILABLE: "overloaded_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "api_error" if status >= HTTPStatus.INTERNAL_SERVER_ERROR else "invalid_request_error"


def error_body(status: int, message: str) -> bytes:
    """An error in Anthropic's shape; its SDKs pick the exception class from the status."""
    payload = {"type": "error", "error": {"type": error_type(status), "message": message}}
    return json.dumps(payload, separators=(",", ":")).encode()


def gateway_error_body(error: GatewayError) -> bytes:
    return error_body(error.status, error.message)


def stream_error_event(error: GatewayError) -> bytes:
    """The one event that ends a Messages stream that failed after its 200 was sent."""
    payload = {
        "type": "error",
        "error": {"type": error_type(error.status), "message": error.message},
    }
    return b"event: error\ndata: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def edit_messages(
    route: Route, payload: dict[str, Any], body: bytes, policy: TokenPolicy
) -> EditedRequest:
    """Check and normalise a Messages (or count_tokens) PAYLOAD in place, enforce the
    key's cap, and say what to reserve. BODY goes on unchanged unless a value changed."""
    check_messages(payload)
    _system(payload)
    prompt_estimate = len(body) // BYTES_PER_TOKEN + 1
    if route is Route.COUNT_TOKENS:
        return EditedRequest(body, False, prompt_estimate, 0, billed=False)
    if payload.get("max_tokens") is None:
        raise InvalidRequest("'max_tokens' is required.", param="max_tokens")
    changed = check_count(payload, "max_tokens", minimum=1)
    check_bool(payload, "stream")
    changed |= _apply_cap(payload, policy)
    if changed:
        body = orjson.dumps(payload)
    return EditedRequest(body, False, prompt_estimate, payload["max_tokens"])


def _apply_cap(payload: dict[str, Any], policy: TokenPolicy) -> bool:
    cap, requested = policy.cap, payload["max_tokens"]
    if cap is None or requested <= cap:
        return False
    if policy.refuse_over_cap:
        raise InvalidRequest(
            f"max_tokens is {requested}, over this API key's limit of {cap}.", param="max_tokens"
        )
    payload["max_tokens"] = cap
    return True


def _system(payload: dict[str, Any]) -> None:
    system = payload.get("system")
    if system is None or isinstance(system, str | list):
        return
    raise InvalidRequest(
        f"'system' must be a string or an array of content blocks, not {kind_of(system)}.",
        param="system",
    )
