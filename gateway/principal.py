"""The principal a request runs as, whichever credential it came with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Rates:
    """Rate limits for one model; None means no limit of that kind."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_requests: int | None = None

    @property
    def any(self) -> bool:
        return (
            self.requests_per_minute is not None
            or self.tokens_per_minute is not None
            or self.concurrent_requests is not None
        )


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-principal limits; None means no limit of that kind.

    The rates apply to all of the principal's requests together. `models` adds,
    per model, rates that apply to that model's requests on top of them.
    """

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_requests: int | None = None
    max_tokens: int | None = None
    # Sequences one request may ask for: prompts x max(n, best_of), or embedding inputs.
    max_batch: int | None = None
    models: Mapping[str, Rates] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", dict(self.models))  # a copy the caller cannot mutate

    @property
    def rates(self) -> Rates:
        return Rates(self.requests_per_minute, self.tokens_per_minute, self.concurrent_requests)


@dataclass(frozen=True, slots=True)
class Principal:
    """An API key or a JWT subject. `models` None means every model."""

    id: str
    tenant: str
    kind: str  # "key" or "jwt"
    models: frozenset[str] | None = None
    limits: Limits = field(default_factory=Limits)

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models
