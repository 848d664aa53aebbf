"""The edits the gateway may make to a client's request body, and its token reservation.

The request contract (`contract.read_terms`) has already checked and
normalised every field read here, so each is absent, null or canonical.

1. A streamed chat or completion request that does not ask for
   `stream_options.include_usage` gets it, so the tokens are counted exactly;
   the one usage-only event it adds is removed from the answer again
   (`usage_scan.StreamUsage(strip=True)`).
2. A key with a `max_tokens` cap: a request over it is lowered to the cap
   (`clamp`) or refused (`refuse`); a request without one gets the cap. The
   cap holds per sequence, as vLLM's `max_tokens` does; `min_tokens` cannot
   push past it.
3. A request asking for more sequences (prompts x choices, or embedding
   inputs) than the principal's `max_batch` is refused.

The body is re-serialised only when one of these (or the contract) changed it;
otherwise the client's own bytes go upstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import BatchTooLarge, InvalidRequest
from gateway.proxy.contract import Terms
from gateway.proxy.routes import Route

# vLLM's default for /v1/completions; chat has none (the rest of the context).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


@dataclass(frozen=True, slots=True)
class EditedRequest:
    body: bytes
    strip_usage: bool
    # The prompt estimate, and the most completion tokens the request may produce.
    prompt_estimate: int
    completion_reserve: int
    # False for a request that generates nothing (a token count): settled at 0, no usage.
    billed: bool = True

    @property
    def token_estimate(self) -> int:
        return self.prompt_estimate + self.completion_reserve


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    cap: int | None
    refuse_over_cap: bool
    default_reserve: int
    max_batch: int | None = None


def _limit_fields(route: Route) -> tuple[str, ...]:
    # vLLM's chat reads max_completion_tokens first, then max_tokens.
    return ("max_completion_tokens", "max_tokens") if route is Route.CHAT else ("max_tokens",)


def _apply_cap(route: Route, payload: dict[str, Any], policy: TokenPolicy) -> bool:
    """Enforce the key's cap on PAYLOAD in place; True if it changed."""
    cap = policy.cap
    if cap is None:
        return False
    present = [name for name in _limit_fields(route) if payload.get(name) is not None]
    changed = False
    if not present:
        payload["max_tokens"] = cap
        changed = True
    for name in [*present, "min_tokens"]:
        requested = payload.get(name)
        if requested is None or requested <= cap:
            continue
        if policy.refuse_over_cap:
            raise InvalidRequest(
                f"{name} is {requested}, over this API key's limit of {cap}.", param=name
            )
        payload[name] = cap
        changed = True
    return changed


def _ask_for_usage(payload: dict[str, Any]) -> bool:
    """Add include_usage to a stream that lacks it; True if added."""
    options = payload.get("stream_options") or {}
    if options.get("include_usage") is True:
        return False
    edited = {name: value for name, value in options.items() if name != "continuous_usage_stats"}
    # Without include_usage, continuous_usage_stats did nothing; with it, it would add usage
    # to every chunk, so it is dropped.
    edited["include_usage"] = True
    payload["stream_options"] = edited
    return True


def _per_sequence(route: Route, payload: dict[str, Any], default_reserve: int) -> int:
    """The most completion tokens one sequence may produce."""
    given = next((payload[name] for name in _limit_fields(route) if payload.get(name)), None)
    if given is None:
        given = COMPLETIONS_DEFAULT_MAX_TOKENS if route is Route.COMPLETIONS else default_reserve
    return max(given, payload.get("min_tokens") or 0)


def _check_batch(route: Route, terms: Terms, limit: int | None) -> None:
    if limit is None or terms.sequences <= limit:
        return
    if route is Route.EMBEDDINGS:
        what, param = f"{terms.prompts} inputs", "input"
    else:
        what = f"{terms.sequences} sequences ({terms.prompts} prompts x {terms.choices} choices)"
        param = "n" if terms.prompts == 1 else "prompt"
    raise BatchTooLarge(
        f"This request asks for {what}; this API key allows at most {limit} per request.",
        param=param,
    )


def edit_request(
    route: Route, payload: dict[str, Any], body: bytes, terms: Terms, policy: TokenPolicy
) -> EditedRequest:
    """PAYLOAD is BODY parsed and checked into TERMS; it may be changed in place."""
    _check_batch(route, terms, policy.max_batch)
    if route is Route.EMBEDDINGS:
        body = orjson.dumps(payload) if terms.changed else body
        return EditedRequest(body, False, terms.prompt_tokens, 0)
    capped = _apply_cap(route, payload, policy)
    strip = terms.stream and _ask_for_usage(payload)
    if capped or strip or terms.changed:
        body = orjson.dumps(payload)
    reserve = terms.sequences * _per_sequence(route, payload, policy.default_reserve)
    return EditedRequest(body, strip, terms.prompt_tokens, reserve)
