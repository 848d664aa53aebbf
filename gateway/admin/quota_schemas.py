"""The admin API's quota bodies: a key's quotas as given, and quotas as they stand.

Values are strict: a string, a boolean or a fraction where a count belongs is
refused, never coerced. Costs are USD here and micro-dollars in the counters.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from gateway.limits.quotas import UNITS, CounterState, usd_to_micro
from gateway.principal import Quotas


def whole_number(value: object) -> object:
    """A count as JSON may write it: 1000 or 1000.0 (JSON Schema's integer, which API
    tools generate), never "1000", true or 1.5."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a whole number")
    return value


Count = Annotated[int, Field(ge=0, le=10**15), BeforeValidator(whole_number)]
Usd = Annotated[float, Field(strict=True, ge=0, le=10**9, allow_inf_nan=False)]


class KeyQuotas(BaseModel):
    """Quotas per UTC day and calendar month (UTC); null or absent means none.
    Tokens are prompt plus completion; costs are USD, priced by the gateway's `pricing`."""

    model_config = ConfigDict(extra="forbid")

    tokens_per_day: Count | None = None
    tokens_per_month: Count | None = None
    prompt_tokens_per_day: Count | None = None
    prompt_tokens_per_month: Count | None = None
    completion_tokens_per_day: Count | None = None
    completion_tokens_per_month: Count | None = None
    requests_per_day: Count | None = None
    requests_per_month: Count | None = None
    cost_per_day: Usd | None = None
    cost_per_month: Usd | None = None

    def to_quotas(self) -> Quotas:
        values = self.model_dump()
        for name in ("cost_per_day", "cost_per_month"):
            if values[name] is not None:
                values[name] = usd_to_micro(values[name])
        return Quotas(**values)

    @classmethod
    def of(cls, quotas: Quotas) -> KeyQuotas:
        values: dict[str, float | int | None] = {
            name: getattr(quotas, name) for name in Quotas.__dataclass_fields__
        }
        for name in ("cost_per_day", "cost_per_month"):
            micro = values[name]
            if micro is not None:
                values[name] = micro / 1_000_000
        return cls.model_validate(values)


class QuotaOut(BaseModel):
    """One quota in its current period. Costs count micro-dollars (`unit`: micro_usd)."""

    kind: str = Field(description="tokens, prompt_tokens, completion_tokens, requests or cost.")
    period: str = Field(description="day (UTC) or month (UTC).")
    period_name: str = Field(description="The period counted: `2026-12-07` or `2026-12`.")
    unit: str = Field(description="tokens, requests or micro_usd.")
    limit: int
    used: int = Field(description="Settled usage in this period.")
    reserved: int = Field(description="Reservations of requests still running.")
    remaining: int = Field(description="limit - used - reserved, not below 0.")
    reset_at: str = Field(description="When the period ends (UTC, ISO 8601).")
    reset_s: float = Field(description="Seconds until then.")
    soft_threshold: float
    soft_threshold_crossed: bool = Field(description="used + reserved >= soft_threshold x limit.")

    @classmethod
    def of(cls, state: CounterState, soft: float, crossed: bool, reset_at: str) -> QuotaOut:
        counter = state.counter
        return cls(
            kind=counter.kind,
            period=counter.period,
            period_name=state.window.name,
            unit=UNITS[counter.kind],
            limit=counter.limit,
            used=state.used,
            reserved=state.reserved,
            remaining=state.remaining,
            reset_at=reset_at,
            reset_s=state.window.reset_s,
            soft_threshold=soft,
            soft_threshold_crossed=crossed,
        )


class QuotaReport(BaseModel):
    """The quotas of one key (its own, not its tenant's) or of one tenant."""

    scope: str = Field(description="key or tenant.")
    key_id: str | None
    tenant: str
    quotas: list[QuotaOut]
