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


QUOTA_KINDS = ("tokens", "prompt_tokens", "completion_tokens", "requests", "cost")


@dataclass(frozen=True, slots=True)
class Quotas:
    """Quotas per UTC day and calendar month; None means no quota of that kind.

    Costs are integer micro-dollars (USD 1 = 1,000,000), so that counters add up
    exactly; the admin API and settings speak USD.
    """

    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    prompt_tokens_per_day: int | None = None
    prompt_tokens_per_month: int | None = None
    completion_tokens_per_day: int | None = None
    completion_tokens_per_month: int | None = None
    requests_per_day: int | None = None
    requests_per_month: int | None = None
    cost_per_day: int | None = None
    cost_per_month: int | None = None

    def items(self) -> list[tuple[str, str, int]]:
        """(kind, period, limit) for every quota that is set."""
        found = []
        for kind in QUOTA_KINDS:
            for period in ("day", "month"):
                limit = getattr(self, f"{kind}_per_{period}")
                if limit is not None:
                    found.append((kind, period, limit))
        return found


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
    quotas: Quotas = field(default_factory=Quotas)

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
