"""The admin API's tenant bodies: what a tenant may be created or patched with, and the
tenant object it answers with.

Values are strict: a string, a boolean or a fraction where a count belongs is a
422, never coerced (a whole float, 1000.0, is the integer JSON Schema allows).
Names of new tenants are 1 to 64 of `A-Z a-z 0-9 . _ @ : -`, starting with a
letter or digit, so they are safe in URLs, logs and Redis keys.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from gateway.admin.quota_schemas import KeyQuotas, whole_number
from gateway.admin.schemas import Metadata, Model, Models, _names_by_pattern
from gateway.principal import Limits, Rates
from gateway.tenants.records import NAME_PATTERN, TenantRecord, tenant_doc

Count = Annotated[int, Field(ge=0, le=10**12), BeforeValidator(whole_number)]
Cap = Annotated[int, Field(ge=1, le=10**12), BeforeValidator(whole_number)]
NewName = Annotated[str, Field(pattern=NAME_PATTERN, min_length=1, max_length=64)]
_RATES = ("requests_per_minute", "tokens_per_minute", "concurrent_requests")
_CAPS = ("max_tokens", "max_batch")


class TenantRates(BaseModel):
    """Rates for one model's requests of the tenant; null means no limit. 0 admits none."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: Count | None = None
    tokens_per_minute: Count | None = None
    concurrent_requests: Count | None = None


class TenantLimits(BaseModel):
    """The tenant's rates, shared by all its keys and JWT subjects, per-model rates on top,
    and the max_tokens and max_batch of its keys that set none of their own."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: Count | None = None
    tokens_per_minute: Count | None = None
    concurrent_requests: Count | None = None
    max_tokens: Cap | None = None
    max_batch: Cap | None = None
    models: Annotated[
        dict[Model, TenantRates], Field(max_length=1000, json_schema_extra=_names_by_pattern)
    ] = Field(default_factory=dict)

    def over(self, base: Limits) -> Limits:
        """BASE with the fields this body holds (a PATCH names only what changes)."""
        given = self.model_fields_set
        values = {n: getattr(self if n in given else base, n) for n in (*_RATES, *_CAPS)}
        models = base.models
        if "models" in given:
            models = {
                model: Rates(*(getattr(rates, n) for n in _RATES))
                for model, rates in self.models.items()
            }
        return Limits(**values, models=models, quotas=base.quotas)


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: NewName
    limits: TenantLimits = Field(default_factory=TenantLimits)
    quotas: KeyQuotas = Field(default_factory=KeyQuotas)
    # The models the tenant's keys and JWT subjects may use; null: every model.
    models: Models | None = None
    metadata: Metadata = Field(default_factory=dict)


class TenantUpdate(BaseModel):
    """Absent fields stay; `limits` and `quotas` change only the fields they name;
    `models: null` allows every model; `metadata` replaces the whole map."""

    model_config = ConfigDict(extra="forbid")

    limits: TenantLimits | None = None
    quotas: KeyQuotas | None = None
    models: Models | None = None
    metadata: Metadata | None = None


class TenantOut(BaseModel):
    name: str
    limits: TenantLimits
    quotas: KeyQuotas
    models: list[str] | None
    metadata: dict[str, str]
    source: Literal["settings", "store"] = Field(
        description="store: written through this API; settings: only in limits.tenants."
    )
    created_at: str | None
    updated_at: str | None

    @classmethod
    def of(cls, record: TenantRecord) -> TenantOut:
        return cls.model_validate(tenant_doc(record))


class TenantList(BaseModel):
    object: Literal["list"] = "list"
    data: list[TenantOut]
