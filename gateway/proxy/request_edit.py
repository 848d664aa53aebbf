"""The two edits the gateway may make to a client's request body, and the token estimate.

1. A streamed chat or completion request that does not ask for
   `stream_options.include_usage` gets it, so the tokens are counted exactly;
   the one usage-only event it adds is removed from the answer again
   (`usage_scan.StreamUsage(strip=True)`).
2. A key with a `max_tokens` cap: a request over it is lowered to the cap
   (`clamp`) or refused (`refuse`); a request without one gets the cap.

The body is re-serialised only when one of these applies; otherwise the
client's own bytes go upstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import InvalidRequest
from gateway.proxy.routes import Route

# vLLM's default for /v1/completions; chat has none (the rest of the context).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
BYTES_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class EditedRequest:
    body: bytes
    strip_usage: bool
    # Prompt estimate plus the most completion tokens the request may produce.
    token_estimate: int


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    cap: int | None
    refuse_over_cap: bool
    default_reserve: int


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _limit_fields(route: Route, payload: dict[str, Any]) -> list[str]:
    fields = ["max_tokens"]
    if route is Route.CHAT:
        fields.insert(0, "max_completion_tokens")
    return [name for name in fields if payload.get(name) is not None]


def _apply_cap(route: Route, payload: dict[str, Any], policy: TokenPolicy) -> bool:
    """Enforce the key's cap on PAYLOAD in place; True if it changed."""
    cap = policy.cap
    if cap is None or route is Route.EMBEDDINGS:
        return False
    present = _limit_fields(route, payload)
    if not present:
        payload["max_tokens"] = cap
        return True
    changed = False
    for name in present:
        requested = _int(payload[name])
        if requested is None or requested <= cap:
            continue  # a malformed value is vLLM's to refuse
        if policy.refuse_over_cap:
            raise InvalidRequest(
                f"{name} is {requested}, over this API key's limit of {cap}.", param=name
            )
        payload[name] = cap
        changed = True
    return changed


def _ask_for_usage(payload: dict[str, Any]) -> bool:
    """Add include_usage to a stream that lacks it; True if added."""
    if payload.get("stream") is not True:
        return False
    options = payload.get("stream_options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        return False  # vLLM refuses it; leave the body as the client sent it
    if options.get("include_usage") is True:
        return False
    edited = {name: value for name, value in options.items() if name != "continuous_usage_stats"}
    # Without include_usage, continuous_usage_stats did nothing; with it, it would add usage
    # to every chunk, so it is dropped.
    edited["include_usage"] = True
    payload["stream_options"] = edited
    return True


def _completion_budget(route: Route, payload: dict[str, Any], default_reserve: int) -> int:
    if route is Route.EMBEDDINGS:
        return 0
    limits = [_int(payload.get(name)) for name in _limit_fields(route, payload)]
    given = next((value for value in limits if value is not None), None)
    if given is None:
        given = COMPLETIONS_DEFAULT_MAX_TOKENS if route is Route.COMPLETIONS else default_reserve
    choices = _int(payload.get("n")) or 1
    return given * choices


def edit_request(
    route: Route, payload: dict[str, Any], body: bytes, policy: TokenPolicy
) -> EditedRequest:
    """PAYLOAD is BODY parsed; it may be changed in place."""
    capped = _apply_cap(route, payload, policy)
    strip = route is not Route.EMBEDDINGS and _ask_for_usage(payload)
    if capped or strip:
        body = orjson.dumps(payload)
    estimate = len(body) // BYTES_PER_TOKEN + 1
    estimate += _completion_budget(route, payload, policy.default_reserve)
    return EditedRequest(body, strip, estimate)
