"""The principal a request runs as, whichever credential it came with."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-principal limits; None means no limit of that kind."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_requests: int | None = None
    max_tokens: int | None = None


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
