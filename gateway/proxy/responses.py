"""OpenAI's Responses API (`POST /v1/responses`), as vLLM serves it: the request contract.

The route goes through the same pipeline as chat (auth, contract, the key's
cap, admission, forwarding); what differs lives here and beside it:

- the contract: `input` a string or an array (vLLM requires it),
  `max_output_tokens` an integer >= 1 or null, checked as chat's counts are
  (`"4000"`, `true`, `2.5` refused naming the field, `2000.0` normalised);
  `stream`, `background` and `store` booleans; `instructions` and
  `previous_response_id` strings;
- `request_id`: vLLM makes a client's `request_id` the response's id, the
  handle every later GET or cancel names. The gateway drops it, so ids are
  always the engine's own and one tenant cannot choose (or collide with)
  another's;
- the key's `max_tokens` cap applies to `max_output_tokens` exactly as to
  chat's `max_tokens`: lowered or refused, and set when absent; the
  reservation is the prompt estimate plus `max_output_tokens`, or the
  deployment's `default_completion_reserve` when there is none;
- a stream's framing is `event: <type>\\ndata: <json>\\n\\n` with no `[DONE]`;
  one that fails after its 200 ends with OpenAI's Responses `error` event.

Usage and the created response's id are read by `responses_usage`; where a
response lives is remembered by `response_store` and used by
`stored_responses`.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import GatewayError, InvalidRequest
from gateway.proxy.contract import BYTES_PER_TOKEN, check_bool, check_count, kind_of
from gateway.proxy.request_edit import EditedRequest, TokenPolicy
from gateway.proxy.routes import Route

LIMIT = "max_output_tokens"
_BOOLS = ("stream", "background", "store")
_STRINGS = ("instructions", "previous_response_id")


def edit_responses(
    route: Route, payload: dict[str, Any], body: bytes, policy: TokenPolicy
) -> EditedRequest:
    """Check and normalise a Responses PAYLOAD in place, enforce the key's cap, and say
    what to reserve. BODY goes on unchanged unless a value changed. (ROUTE is always
    `/v1/responses`: the signature is that of `anthropic.edit_messages`.)"""
    _input(payload)
    for name in _BOOLS:
        check_bool(payload, name)
    for name in _STRINGS:
        value = payload.get(name)
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"'{name}' must be a string, not {kind_of(value)}.", param=name)
    changed = check_count(payload, LIMIT, minimum=1)
    changed |= _apply_cap(payload, policy)
    if "request_id" in payload:
        del payload["request_id"]
        changed = True
    if changed:
        body = orjson.dumps(payload)
    prompt_estimate = len(body) // BYTES_PER_TOKEN + 1
    reserve = payload.get(LIMIT) or policy.default_reserve
    return EditedRequest(body, False, prompt_estimate, reserve)


def _input(payload: dict[str, Any]) -> None:
    value = payload.get("input")
    if value is None:
        raise InvalidRequest("'input' is required.", param="input")
    if not isinstance(value, str | list):
        raise InvalidRequest(
            f"'input' must be a string or an array of input items, not {kind_of(value)}.",
            param="input",
        )


def _apply_cap(payload: dict[str, Any], policy: TokenPolicy) -> bool:
    cap, requested = policy.cap, payload.get(LIMIT)
    if cap is None or (requested is not None and requested <= cap):
        return False
    if requested is not None and policy.refuse_over_cap:
        raise InvalidRequest(
            f"{LIMIT} is {requested}, over this API key's limit of {cap}.", param=LIMIT
        )
    payload[LIMIT] = cap
    return True


def stream_error_event(error: GatewayError) -> bytes:
    """The one event that ends a Responses stream that failed after its 200 was sent:
    OpenAI's `error` streaming event, which its SDKs read as ResponseErrorEvent."""
    payload = {
        "type": "error",
        "code": error.code or error.error_type,
        "message": error.message,
        "param": None,
        "sequence_number": 0,
    }
    return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"
