"""Rates, quotas, prices and how limits are kept."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
)

from gateway.settings.base import Secret, _Strict


class LimitsSettings(_Strict):
    requests_per_minute: int | None = Field(default=None, ge=0)
    tokens_per_minute: int | None = Field(default=None, ge=0)
    concurrent_requests: int | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_batch: int | None = Field(default=None, ge=1)


class RatesSettings(_Strict):
    requests_per_minute: int | None = Field(default=None, ge=0)
    tokens_per_minute: int | None = Field(default=None, ge=0)
    concurrent_requests: int | None = Field(default=None, ge=0)


class QuotaSettings(_Strict):
    """Quotas per UTC day and calendar month (UTC); costs in USD, from `pricing`."""

    tokens_per_day: int | None = Field(default=None, ge=0, le=10**15)
    tokens_per_month: int | None = Field(default=None, ge=0, le=10**15)
    prompt_tokens_per_day: int | None = Field(default=None, ge=0, le=10**15)
    prompt_tokens_per_month: int | None = Field(default=None, ge=0, le=10**15)
    completion_tokens_per_day: int | None = Field(default=None, ge=0, le=10**15)
    completion_tokens_per_month: int | None = Field(default=None, ge=0, le=10**15)
    requests_per_day: int | None = Field(default=None, ge=0, le=10**15)
    requests_per_month: int | None = Field(default=None, ge=0, le=10**15)
    cost_per_day: float | None = Field(default=None, ge=0, le=10**9, allow_inf_nan=False)
    cost_per_month: float | None = Field(default=None, ge=0, le=10**9, allow_inf_nan=False)


class PriceSettings(_Strict):
    """USD per million prompt tokens and per million completion tokens."""

    prompt: float = Field(ge=0, le=10**6, allow_inf_nan=False)
    completion: float = Field(ge=0, le=10**6, allow_inf_nan=False)


class TenantLimitsSettings(RatesSettings):
    """A tenant's limits, shared by all its keys and JWT subjects; `models` adds
    per-model rates on top of the tenant-wide ones."""

    models: dict[str, RatesSettings] = Field(default_factory=dict)
    quotas: QuotaSettings = QuotaSettings()
    # Sequences one request of the tenant's keys may ask for, unless a key says otherwise.
    max_batch: int | None = Field(default=None, ge=1)
    # The max_tokens cap of the tenant's keys and JWT subjects that have none of their own.
    max_tokens: int | None = Field(default=None, ge=1)
    # Models the tenant's keys and JWT subjects may use (on top of their own lists); None: all.
    allowed_models: list[str] | None = None


class RateLimitSettings(_Strict):
    """How limits are kept. `memory` serves one process; replicas share `redis`.

    When Redis cannot be reached, `on_backend_error` admits requests (`open`) or
    refuses them with 503 (`closed`); either way it is counted and logged.
    """

    backend: Literal["memory", "redis"] = "memory"
    # Defaults to auth.key_store.redis_url.
    redis_url: Secret = None
    on_backend_error: Literal["open", "closed"] = "open"
    backend_timeout: float = Field(default=0.5, gt=0, le=10)
    lease_ttl: float = Field(default=30.0, ge=3, le=3600)
    # A request over its key's max_tokens is lowered to it (`clamp`) or refused (`refuse`).
    max_tokens_policy: Literal["clamp", "refuse"] = "clamp"
    # Completion tokens reserved for a request that names no max_tokens under no cap.
    default_completion_reserve: int = Field(default=1024, ge=1)
    # Sequences one request may ask for (prompts x max(n, best_of), or embedding inputs),
    # unless the key or its tenant says otherwise; OpenAI's own bound on embedding inputs.
    max_batch: int = Field(default=2048, ge=1)
    tenants: dict[str, TenantLimitsSettings] = Field(default_factory=dict)
    # A quota whose use (with reservations) passes this share of it is reported.
    quota_soft_threshold: float = Field(default=0.8, gt=0, le=1)
