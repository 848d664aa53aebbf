"""Which API families each model serves through the gateway.

A vLLM server registers its pooling routes (`/v1/rerank`, `/v1/score`,
`/v2/embed`, ...) for pooling models and its audio routes for speech models;
a chat deployment has no business answering them, and exposing them by
default would widen what every key can reach. So a model serves chat,
completions, embeddings, Messages and Responses unless its settings say
otherwise (`models[].apis`), and the pooling and audio routes only when its
`apis` names them.

A route a model does not serve is refused like a model the caller cannot
see: 404, OpenAI's `NotFoundError`, `param: "model"`, code `model_not_found`;
its message names the route, since the caller may use the model:
"The model 'm' does not serve /v1/rerank through this gateway."
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gateway.errors import ModelNotFound
from gateway.proxy.routes import Route

# Each forwarded route's family, as `models[].apis` names it. A route missing here is
# served for every model.
FAMILIES: Mapping[Route, str] = {
    Route.CHAT: "chat",
    Route.COMPLETIONS: "completions",
    Route.EMBEDDINGS: "embeddings",
    Route.MESSAGES: "messages",
    Route.COUNT_TOKENS: "messages",
    Route.RESPONSES: "responses",
    Route.RERANK: "rerank",
    Route.RERANK_V2: "rerank",
    Route.SCORE: "score",
    Route.EMBED_V2: "embed_v2",
    Route.TRANSCRIPTIONS: "transcriptions",
    Route.TRANSLATIONS: "translations",
}
DEFAULT = frozenset({"chat", "completions", "embeddings", "messages", "responses"})


@dataclass(frozen=True, slots=True)
class ModelApis:
    """The families each configured model serves; any other model (an adapter a replica
    reports, say) serves the default ones."""

    served: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, models: Iterable[tuple[str, Iterable[str]]]) -> ModelApis:
        return cls({name: frozenset(apis) for name, apis in models})

    def check(self, route: Route, model: str) -> None:
        """Refuse ROUTE for MODEL unless the model serves the route's family."""
        family = FAMILIES.get(route)
        if family is None or family in self.served.get(model, DEFAULT):
            return
        raise ModelNotFound(
            f"The model '{model}' does not serve {route.value} through this gateway.",
            param="model",
        )
