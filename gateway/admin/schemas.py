"""The admin API's request and response bodies.

Inputs and outputs are separate models (FSFT `models.py`): an input never
carries server-made fields, and an output never carries a secret's hash. The
plaintext key appears in exactly one model, `KeyCreated`, returned once by
create and once by each rotate.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from gateway.admin.audit import AuditEntry
from gateway.admin.quota_schemas import KeyQuotas
from gateway.keys.records import KeyRecord
from gateway.principal import Limits, Rates
from gateway.usage.records import UsageCounts

MAX_GRACE_SECONDS = 30 * 24 * 3600
KEY_ID_PATTERN = r"^[a-z2-7]{16}$"


# No control characters (C0, DEL, C1): they break log lines and terminals.
TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"


def _encodable(value: str) -> str:
    # JSON can carry a lone surrogate ("\ud800"); no store can keep one.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        # Within an hour or so of year 1 or year 9999: the bounds mean the same thing.
        return (datetime.min if value.year == 1 else datetime.max).replace(tzinfo=UTC)


def _text(min_length: int, max_length: int) -> Any:
    return Field(min_length=min_length, max_length=max_length, pattern=TEXT_PATTERN)


Tenant = Annotated[str, _text(1, 128), AfterValidator(_encodable)]
Name = Annotated[str, _text(0, 200), AfterValidator(_encodable)]
Model = Annotated[str, _text(1, 256), AfterValidator(_encodable)]
MetaKey = Annotated[str, _text(1, 64), AfterValidator(_encodable)]
MetaValue = Annotated[str, _text(0, 1024), AfterValidator(_encodable)]
# Written out: pydantic would turn the key pattern into `patternProperties`, which
# lets other keys through with any value.
_METADATA_SCHEMA = {
    "type": "object",
    "maxProperties": 64,
    "propertyNames": {"minLength": 1, "maxLength": 64, "pattern": TEXT_PATTERN},
    "additionalProperties": {"type": "string", "maxLength": 1024, "pattern": TEXT_PATTERN},
}
Metadata = Annotated[
    dict[MetaKey, MetaValue], Field(max_length=64), WithJsonSchema(_METADATA_SCHEMA)
]
Models = Annotated[list[Model], Field(max_length=1000)]
Moment = Annotated[AwareDatetime, AfterValidator(_utc)]
Limit = Annotated[int, Field(ge=1, le=10**12)]


class ModelRates(BaseModel):
    """Rates for one model's requests, on top of the key's own; null means no limit."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: Limit | None = None
    tokens_per_minute: Limit | None = None
    concurrent_requests: Limit | None = None

    def to_rates(self) -> Rates:
        return Rates(self.requests_per_minute, self.tokens_per_minute, self.concurrent_requests)

    @classmethod
    def of(cls, rates: Rates) -> ModelRates:
        return cls(
            requests_per_minute=rates.requests_per_minute,
            tokens_per_minute=rates.tokens_per_minute,
            concurrent_requests=rates.concurrent_requests,
        )


def _names_by_pattern(schema: dict[str, Any]) -> None:
    # pydantic writes a key pattern as `patternProperties`, which lets other keys
    # through with any value; say it as `propertyNames` plus one value schema.
    ((pattern, values),) = schema.pop("patternProperties").items()
    schema["propertyNames"]["pattern"] = pattern
    schema["additionalProperties"] = values


ModelLimits = Annotated[
    dict[Model, ModelRates], Field(max_length=1000, json_schema_extra=_names_by_pattern)
]


class KeyLimits(BaseModel):
    """Per-key limits; null (or absent) means no limit of that kind.

    The rates count all of the key's requests; `models` adds rates per model, counted
    on that model's requests only. `max_tokens` applies to every request, to each of its
    sequences; `max_batch` bounds the sequences one request may ask for (prompts x choices,
    or embedding inputs), and without it the tenant's or the gateway's default applies.
    """

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: Limit | None = None
    tokens_per_minute: Limit | None = None
    concurrent_requests: Limit | None = None
    max_tokens: Limit | None = None
    max_batch: Limit | None = None
    models: ModelLimits = Field(default_factory=dict)
    quotas: KeyQuotas = Field(default_factory=KeyQuotas)

    def to_limits(self) -> Limits:
        return Limits(
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            concurrent_requests=self.concurrent_requests,
            max_tokens=self.max_tokens,
            max_batch=self.max_batch,
            models={model: rates.to_rates() for model, rates in self.models.items()},
            quotas=self.quotas.to_quotas(),
        )

    @classmethod
    def of(cls, limits: Limits) -> KeyLimits:
        return cls(
            requests_per_minute=limits.requests_per_minute,
            tokens_per_minute=limits.tokens_per_minute,
            concurrent_requests=limits.concurrent_requests,
            max_tokens=limits.max_tokens,
            max_batch=limits.max_batch,
            models={model: ModelRates.of(rates) for model, rates in sorted(limits.models.items())},
            quotas=KeyQuotas.of(limits.quotas),
        )


class KeyCreate(BaseModel):
    """A new key. `models` null (or absent) lets the key use every model."""

    model_config = ConfigDict(extra="forbid")

    tenant: Tenant
    name: Name = ""
    models: Models | None = None
    limits: KeyLimits = Field(default_factory=KeyLimits)
    expires_at: Moment | None = None
    metadata: Metadata = Field(default_factory=dict)


class KeyUpdate(BaseModel):
    """Fields to change; absent fields stay. `models` and `expires_at` may be null (clear)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    # `SkipJsonSchema[None]`: absent is allowed, null is not (the validator below says so).
    name: Name | SkipJsonSchema[None] = None
    models: Models | None = None
    limits: KeyLimits | SkipJsonSchema[None] = None
    expires_at: Moment | None = None
    metadata: Metadata | SkipJsonSchema[None] = None

    @model_validator(mode="after")
    def _not_null_where_it_means_nothing(self) -> KeyUpdate:
        for name in ("name", "limits", "metadata"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        if not self.model_fields_set:
            raise ValueError("an update changes at least one field")
        return self


class RotateIn(BaseModel):
    """With `grace_seconds` > 0, the old secret keeps working that long after the rotation."""

    model_config = ConfigDict(extra="forbid")

    grace_seconds: int = Field(default=0, ge=0, le=MAX_GRACE_SECONDS)


class KeyOut(BaseModel):
    """A key as the admin sees it: never its secret, never its hash."""

    id: str
    tenant: str
    name: str
    status: Literal["active", "revoked", "expired"]
    created_at: datetime
    models: list[str] | None
    limits: KeyLimits
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    previous_secret_valid_until: datetime | None = Field(
        description="After a rotation with a grace period: until when the old secret works."
    )
    metadata: dict[str, str]

    @classmethod
    def of(cls, record: KeyRecord, now: datetime) -> KeyOut:
        grace = record.previous_valid_until
        return cls(
            id=record.id,
            tenant=record.tenant,
            name=record.name,
            status=_status(record, now),
            created_at=record.created_at,
            models=None if record.models is None else sorted(record.models),
            limits=KeyLimits.of(record.limits),
            expires_at=record.expires_at,
            last_used_at=record.last_used_at,
            revoked_at=record.revoked_at,
            previous_secret_valid_until=grace if grace is not None and now < grace else None,
            metadata=dict(record.metadata),
        )


def _status(record: KeyRecord, now: datetime) -> Literal["active", "revoked", "expired"]:
    if record.revoked_at is not None:
        return "revoked"
    return "active" if record.is_usable(now) else "expired"


class KeyCreated(KeyOut):
    """A key with its plaintext, shown in this response only: store it now."""

    key: str = Field(description="The full API key. It is not stored and never shown again.")

    @classmethod
    def with_key(cls, record: KeyRecord, now: datetime, token: str) -> KeyCreated:
        return cls(**KeyOut.of(record, now).model_dump(), key=token)


class KeyPage(BaseModel):
    data: list[KeyOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: done.")


class ModelUsage(BaseModel):
    """Requests and tokens. A request whose usage the replica never reported (its client
    left mid-stream) counts its token reservation, and counts in `estimated_requests`."""

    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated_requests: int = Field(
        description="Requests whose tokens are the gateway's reservation: the replica "
        "reported no usage (a client that left mid-stream, say)."
    )

    @classmethod
    def of(cls, counts: UsageCounts) -> ModelUsage:
        return cls(
            requests=counts.requests,
            prompt_tokens=counts.prompt_tokens,
            completion_tokens=counts.completion_tokens,
            total_tokens=counts.prompt_tokens + counts.completion_tokens,
            estimated_requests=counts.estimated_requests,
        )


def _usage(per_model: Mapping[str, UsageCounts]) -> tuple[dict[str, ModelUsage], ModelUsage]:
    total = UsageCounts()
    for counts in per_model.values():
        total.add(counts)
    models = {model: ModelUsage.of(counts) for model, counts in sorted(per_model.items())}
    return models, ModelUsage.of(total)


_SINCE = "The first UTC day counted; absent or null: from the first day recorded."
_UNTIL = "The last UTC day counted, itself included; absent or null: up to the last."


class DayRange(BaseModel):
    """The UTC days a usage read covers, both ends included; an absent end is open.

    `since` after `until` is an empty range, read as zeros rather than refused: the
    OpenAPI schema cannot say that one query parameter must not pass another, and
    what it cannot say a client (or schemathesis) may rightly send.
    """

    since: date | None = Field(default=None, description=_SINCE)
    until: date | None = Field(default=None, description=_UNTIL)


class KeyUsage(BaseModel):
    """Use of one key over UTC days `since` to `until`: per model, and in total."""

    key_id: str
    tenant: str
    last_used_at: datetime | None
    since: date | None = Field(description=_SINCE)
    until: date | None = Field(description=_UNTIL)
    models: dict[str, ModelUsage]
    total: ModelUsage

    @classmethod
    def of(
        cls, record: KeyRecord, per_model: Mapping[str, UsageCounts], window: DayRange
    ) -> KeyUsage:
        models, total = _usage(per_model)
        return cls(
            key_id=record.id,
            tenant=record.tenant,
            last_used_at=record.last_used_at,
            since=window.since,
            until=window.until,
            models=models,
            total=total,
        )


class TenantUsage(BaseModel):
    """Use by every key and JWT subject of a tenant over UTC days `since` to `until`."""

    tenant: str
    since: date | None = Field(description=_SINCE)
    until: date | None = Field(description=_UNTIL)
    models: dict[str, ModelUsage]
    total: ModelUsage

    @classmethod
    def of(cls, tenant: str, per_model: Mapping[str, UsageCounts], window: DayRange) -> TenantUsage:
        models, total = _usage(per_model)
        return cls(
            tenant=tenant,
            since=window.since,
            until=window.until,
            models=models,
            total=total,
        )


class AuditEntryOut(BaseModel):
    id: str
    at: datetime
    actor: str = Field(description="The admin credential used: `token:<index>` or `jwt:<sub>`.")
    action: str
    key_id: str | None
    tenant: str | None
    detail: dict[str, str]

    @classmethod
    def of(cls, entry: AuditEntry) -> AuditEntryOut:
        return cls(
            id=entry.id,
            at=entry.at,
            actor=entry.actor,
            action=entry.action,
            key_id=entry.key_id,
            tenant=entry.tenant,
            detail=dict(entry.detail),
        )


class AuditPage(BaseModel):
    data: list[AuditEntryOut]
    next_cursor: str | None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorOut(BaseModel):
    """OpenAI's error shape, used for every error this API returns."""

    error: ErrorDetail


class LoadOut(BaseModel):
    """A replica's own gauges, as last read from its `/metrics`."""

    waiting: float = Field(description="Requests queued in the replica, from every client.")
    running: float = Field(description="Requests the replica is running, from every client.")
    kv_cache: float | None = Field(description="KV-cache use, 0-1; null: not reported.")
    age_s: float = Field(description="Seconds since the gauges were read.")


class ReplicaOut(BaseModel):
    """One replica as the gateway sees it now; never its API key."""

    url: str
    source: str = Field(description="`static` (configured), or the discovery source's name.")
    state: str = Field(
        description="healthy, unhealthy, unchecked (configured, not checked yet), joining "
        "(discovered, not checked yet), ejected (failed requests) or draining."
    )
    usable: bool = Field(description="Whether new requests may go to it.")
    outstanding: int = Field(description="Requests in flight to it from this gateway.")
    failures: int = Field(description="Consecutive failed requests.")
    last_check_age_s: float | None = Field(
        description="Seconds since its last health check; null: not checked yet."
    )
    load: LoadOut | None = Field(description="Its own gauges; null: not read (yet).")
    models: list[str] = Field(description="The model ids it reports serving.")


class ModelUpstreams(BaseModel):
    model: str
    usable: int = Field(description="How many of its replicas may take new requests.")
    replicas: list[ReplicaOut]


class UpstreamsOut(BaseModel):
    """The configured models, in configuration order, with their replicas."""

    models: list[ModelUpstreams]
