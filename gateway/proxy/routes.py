"""The route allowlist: the only paths a client can reach through the gateway.

Matching is exact on the raw, still percent-encoded path, so `..`, `//` and
`%2e` tricks never reach a replica: anything that is not byte-for-byte one of
these routes is a 404 from the gateway itself. vLLM serves many routes that its
`--api-key` leaves open (`/invocations`, `/tokenize`, `/metrics`, ...); none of
them is here.
"""

from __future__ import annotations

import enum
import re
from urllib.parse import unquote

from gateway.errors import MethodNotAllowed, RouteNotFound


class Route(enum.Enum):
    CHAT = "/v1/chat/completions"
    COMPLETIONS = "/v1/completions"
    EMBEDDINGS = "/v1/embeddings"
    MODELS = "/v1/models"
    MODEL = "/v1/models/{model}"
    # Anthropic's Messages API, as vLLM serves it (gateway.proxy.anthropic).
    MESSAGES = "/v1/messages"
    COUNT_TOKENS = "/v1/messages/count_tokens"
    # OpenAI's Responses API (gateway.proxy.responses); the by-id routes go to the replica
    # that created the response (gateway.proxy.stored_responses).
    RESPONSES = "/v1/responses"
    RESPONSE = "/v1/responses/{id}"
    RESPONSE_CANCEL = "/v1/responses/{id}/cancel"
    # Pooling and audio routes: forwarded only for a model whose `apis` names their family
    # (gateway.proxy.apis); their contracts are gateway.proxy.pooling and gateway.proxy.audio.
    RERANK = "/v1/rerank"
    RERANK_V2 = "/v2/rerank"
    SCORE = "/v1/score"
    EMBED_V2 = "/v2/embed"
    TRANSCRIPTIONS = "/v1/audio/transcriptions"
    TRANSLATIONS = "/v1/audio/translations"

    @property
    def forwarded(self) -> bool:
        return self in FORWARDED

    @property
    def anthropic(self) -> bool:
        """Anthropic's dialect: `x-api-key`, its error shape and its event framing."""
        return self in ANTHROPIC

    @property
    def by_response_id(self) -> bool:
        return self in (Route.RESPONSE, Route.RESPONSE_CANCEL)

    @property
    def pooling(self) -> bool:
        return self in POOLING

    @property
    def audio(self) -> bool:
        """A multipart/form-data upload, under its own size limit."""
        return self in AUDIO


# Tuples, not sets: `in` compares members by identity, where a set would hash each one
# through Enum.__hash__, a Python call, several times per request.
POOLING = (Route.RERANK, Route.RERANK_V2, Route.SCORE, Route.EMBED_V2)
AUDIO = (Route.TRANSCRIPTIONS, Route.TRANSLATIONS)
FORWARDED = (
    Route.CHAT,
    Route.COMPLETIONS,
    Route.EMBEDDINGS,
    Route.MESSAGES,
    Route.COUNT_TOKENS,
    Route.RESPONSES,
    Route.RESPONSE,
    Route.RESPONSE_CANCEL,
    *POOLING,
    *AUDIO,
)
ANTHROPIC = (Route.MESSAGES, Route.COUNT_TOKENS)
ANTHROPIC_PATHS = frozenset(route.value for route in ANTHROPIC)
_GETS = (Route.MODELS, Route.MODEL, Route.RESPONSE)
_METHODS = {route: ("GET" if route in _GETS else "POST") for route in Route}
_EXACT = {route.value.encode(): route for route in Route if "{" not in route.value}
_MODEL_PREFIX = b"/v1/models/"
_RESPONSE_PREFIX = b"/v1/responses/"
_CANCEL = b"/cancel"
# A response id as vLLM (`resp_` + hex) and OpenAI mint them; anything else (`..`, `/`,
# `%2f`, ...) is no route at all.
_RESPONSE_ID = re.compile(rb"[A-Za-z0-9_-]{1,128}")


def match_route(method: str, raw_path: bytes) -> tuple[Route, str | None]:
    """Return the route and, for `/v1/models/{model}`, the decoded model id; for the
    Responses by-id routes, the response id."""
    route: Route | None = _EXACT.get(raw_path)
    model: str | None = None
    if route is None and raw_path.startswith(_MODEL_PREFIX) and len(raw_path) > len(_MODEL_PREFIX):
        route, model = Route.MODEL, unquote(raw_path[len(_MODEL_PREFIX) :].decode("latin-1"))
    elif route is None and raw_path.startswith(_RESPONSE_PREFIX):
        route, model = _response_route(raw_path[len(_RESPONSE_PREFIX) :])
    if route is None:
        raise RouteNotFound(f"Unknown request URL: {method} {raw_path.decode('latin-1')}.")
    allowed = _METHODS[route]
    if method != allowed:
        raise MethodNotAllowed(
            f"Method {method} is not allowed for {route.value}; use {allowed}.",
            headers={"allow": allowed},
        )
    return route, model


def _response_route(rest: bytes) -> tuple[Route | None, str | None]:
    route = Route.RESPONSE
    if rest.endswith(_CANCEL):
        route, rest = Route.RESPONSE_CANCEL, rest[: -len(_CANCEL)]
    if _RESPONSE_ID.fullmatch(rest) is None:
        return None, None
    return route, rest.decode("ascii")
