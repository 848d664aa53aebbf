"""The route allowlist: the only paths a client can reach through the gateway.

Matching is exact on the raw, still percent-encoded path, so `..`, `//` and
`%2e` tricks never reach a replica: anything that is not byte-for-byte one of
these routes is a 404 from the gateway itself. vLLM serves many routes that its
`--api-key` leaves open (`/invocations`, `/tokenize`, `/metrics`, ...); none of
them is here.
"""

from __future__ import annotations

import enum
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
    def pooling(self) -> bool:
        return self in POOLING

    @property
    def audio(self) -> bool:
        """A multipart/form-data upload, under its own size limit."""
        return self in AUDIO


POOLING = frozenset({Route.RERANK, Route.RERANK_V2, Route.SCORE, Route.EMBED_V2})
AUDIO = frozenset({Route.TRANSCRIPTIONS, Route.TRANSLATIONS})
FORWARDED = frozenset(
    {Route.CHAT, Route.COMPLETIONS, Route.EMBEDDINGS, Route.MESSAGES, Route.COUNT_TOKENS}
    | POOLING
    | AUDIO
)
ANTHROPIC = frozenset({Route.MESSAGES, Route.COUNT_TOKENS})
ANTHROPIC_PATHS = frozenset(route.value for route in ANTHROPIC)
_METHODS = {route: ("GET" if route in (Route.MODELS, Route.MODEL) else "POST") for route in Route}
_EXACT = {route.value.encode(): route for route in Route if route is not Route.MODEL}
_MODEL_PREFIX = b"/v1/models/"


def match_route(method: str, raw_path: bytes) -> tuple[Route, str | None]:
    """Return the route and, for `/v1/models/{model}`, the decoded model id."""
    route: Route | None = _EXACT.get(raw_path)
    model: str | None = None
    if route is None and raw_path.startswith(_MODEL_PREFIX) and len(raw_path) > len(_MODEL_PREFIX):
        route, model = Route.MODEL, unquote(raw_path[len(_MODEL_PREFIX) :].decode("latin-1"))
    if route is None:
        raise RouteNotFound(f"Unknown request URL: {method} {raw_path.decode('latin-1')}.")
    allowed = _METHODS[route]
    if method != allowed:
        raise MethodNotAllowed(
            f"Method {method} is not allowed for {route.value}; use {allowed}.",
            headers={"allow": allowed},
        )
    return route, model
