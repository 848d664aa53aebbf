"""What a store keeps about a key, how an update is described, and the record's text form.

A record holds the HMAC of the key's secret, never the secret, and even the
hash stays out of `repr` so a logged record leaks nothing an attacker could
test guesses against. Times are timezone-aware; stores keep them in UTC to the
microsecond, so a record reads back equal to what was written.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TypeVar, overload

from gateway.keys.format import ApiKey, generate, hash_secret, is_key_id, verify
from gateway.principal import Limits, Principal, Quotas, Rates

T = TypeVar("T")


class Unset(enum.Enum):
    """Marks a `KeyChanges` field the update leaves alone (None is a value: "clear it")."""

    UNSET = "unset"


UNSET = Unset.UNSET


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One API key. `models` None means every model; `metadata` is free-form text labels.

    After a rotation with a grace period, `previous_secret_hash` still opens the
    key until `previous_valid_until`.
    """

    id: str
    tenant: str
    name: str
    secret_hash: str = field(repr=False)
    created_at: datetime
    models: frozenset[str] | None = None
    limits: Limits = field(default_factory=Limits)
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    previous_secret_hash: str | None = field(default=None, repr=False)
    previous_valid_until: datetime | None = None

    def __post_init__(self) -> None:
        if not is_key_id(self.id):
            raise ValueError("a key record's id must be a key id (16 characters of base32)")
        if not self.tenant:
            raise ValueError("a key record needs a tenant")
        object.__setattr__(self, "metadata", dict(self.metadata))  # a copy the caller cannot mutate
        for name in ("created_at", "expires_at", "last_used_at", "revoked_at"):
            _require_aware(name, getattr(self, name))
        _require_aware("previous_valid_until", self.previous_valid_until)
        if (self.previous_secret_hash is None) != (self.previous_valid_until is None):
            raise ValueError("previous_secret_hash and previous_valid_until go together")

    def is_usable(self, now: datetime) -> bool:
        """Not revoked and not expired at `now`."""
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at

    def secret_matches(self, pepper: bytes, secret: str, now: datetime) -> bool:
        """The current secret, or the previous one while its grace period lasts."""
        if verify(pepper, secret, self.secret_hash):
            return True
        if self.previous_secret_hash is None or self.previous_valid_until is None:
            return False
        return now < self.previous_valid_until and verify(pepper, secret, self.previous_secret_hash)

    def principal(self) -> Principal:
        return Principal(
            id=self.id, tenant=self.tenant, kind="key", models=self.models, limits=self.limits
        )


def _require_aware(name: str, value: datetime | None) -> None:
    if value is not None and value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


@dataclass(frozen=True, slots=True)
class Rotation:
    """A new secret. With `grace_until`, the current secret keeps working until then."""

    secret_hash: str = field(repr=False)
    grace_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class KeyChanges:
    """An update to a key: every field left `UNSET` stays as it is.

    The id, tenant and `created_at` never change. A rotation is applied by the
    store inside its transaction, so the hash it moves to "previous" is the one
    stored at that moment, not one the caller read earlier.
    """

    name: str | Unset = UNSET
    models: frozenset[str] | Unset | None = UNSET
    limits: Limits | Unset = UNSET
    expires_at: datetime | Unset | None = UNSET
    metadata: Mapping[str, str] | Unset = UNSET
    revoked_at: datetime | Unset | None = UNSET
    rotation: Rotation | None = None

    def apply(self, record: KeyRecord) -> KeyRecord:
        previous_hash, previous_until = record.previous_secret_hash, record.previous_valid_until
        secret_hash = record.secret_hash
        if self.rotation is not None:
            secret_hash = self.rotation.secret_hash
            previous_until = self.rotation.grace_until
            previous_hash = None if previous_until is None else record.secret_hash
        return replace(
            record,
            name=_pick(self.name, record.name),
            models=_pick(self.models, record.models),
            limits=_pick(self.limits, record.limits),
            expires_at=_pick(self.expires_at, record.expires_at),
            metadata=dict(_pick(self.metadata, record.metadata)),
            revoked_at=_pick(self.revoked_at, record.revoked_at),
            secret_hash=secret_hash,
            previous_secret_hash=previous_hash,
            previous_valid_until=previous_until,
        )


def _pick(new: T | Unset, old: T) -> T:
    return old if isinstance(new, Unset) else new


def new_key(
    pepper: bytes,
    *,
    tenant: str,
    name: str,
    created_at: datetime,
    models: frozenset[str] | None = None,
    limits: Limits | None = None,
    expires_at: datetime | None = None,
    metadata: Mapping[str, str] | None = None,
) -> tuple[ApiKey, KeyRecord]:
    """A fresh key and the record to store for it. Show `key.token` once, then drop it."""
    key = generate()
    record = KeyRecord(
        id=key.id,
        tenant=tenant,
        name=name,
        secret_hash=hash_secret(pepper, key.secret),
        created_at=created_at,
        models=models,
        limits=limits or Limits(),
        expires_at=expires_at,
        metadata=metadata or {},
    )
    return key, record


def new_secret(
    pepper: bytes, key_id: str, *, grace_until: datetime | None = None
) -> tuple[ApiKey, Rotation]:
    """A new secret for an existing key, and the rotation that stores its hash."""
    key = generate(key_id)
    return key, Rotation(hash_secret(pepper, key.secret), grace_until=grace_until)


# The text form: one JSON document per record (Redis), or these pieces per column (SQLite).


@overload
def format_time(value: datetime) -> str: ...
@overload
def format_time(value: None) -> None: ...
def format_time(value: datetime | None) -> str | None:
    """UTC, microseconds, fixed width: such strings sort in time order."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def parse_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def encode_models(models: frozenset[str] | None) -> str | None:
    return None if models is None else json.dumps(sorted(models))


def decode_models(text: str | None) -> frozenset[str] | None:
    if text is None:
        return None
    return frozenset(_str_list(json.loads(text), "models"))


def encode_limits(limits: Limits) -> str:
    return json.dumps(_limits_doc(limits), sort_keys=True)


def decode_limits(text: str) -> Limits:
    return _limits_from(json.loads(text))


def encode_metadata(metadata: Mapping[str, str]) -> str:
    return json.dumps(dict(metadata), sort_keys=True)


def decode_metadata(text: str) -> dict[str, str]:
    return _str_dict(json.loads(text), "metadata")


def record_to_json(record: KeyRecord) -> str:
    doc = {
        "id": record.id,
        "tenant": record.tenant,
        "name": record.name,
        "secret_hash": record.secret_hash,
        "created_at": format_time(record.created_at),
        "models": None if record.models is None else sorted(record.models),
        "limits": _limits_doc(record.limits),
        "expires_at": format_time(record.expires_at),
        "last_used_at": format_time(record.last_used_at),
        "revoked_at": format_time(record.revoked_at),
        "metadata": dict(record.metadata),
        "previous_secret_hash": record.previous_secret_hash,
        "previous_valid_until": format_time(record.previous_valid_until),
    }
    return json.dumps(doc, sort_keys=True)


def record_from_json(text: str | bytes) -> KeyRecord:
    """The inverse of `record_to_json`; `ValueError` for anything it did not write."""
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("a key record is a JSON object")
    models = doc.get("models")
    created_at = parse_time(_text(doc, "created_at"))
    if created_at is None:
        raise ValueError("a key record needs created_at")
    return KeyRecord(
        id=_text(doc, "id") or "",
        tenant=_text(doc, "tenant") or "",
        name=_text(doc, "name") or "",
        secret_hash=_text(doc, "secret_hash") or "",
        created_at=created_at,
        models=None if models is None else frozenset(_str_list(models, "models")),
        limits=_limits_from(doc.get("limits")),
        expires_at=parse_time(_text(doc, "expires_at")),
        last_used_at=parse_time(_text(doc, "last_used_at")),
        revoked_at=parse_time(_text(doc, "revoked_at")),
        metadata=_str_dict(doc.get("metadata", {}), "metadata"),
        previous_secret_hash=_text(doc, "previous_secret_hash"),
        previous_valid_until=parse_time(_text(doc, "previous_valid_until")),
    )


_RATE_FIELDS = ("requests_per_minute", "tokens_per_minute", "concurrent_requests")
_LIMIT_FIELDS = (*_RATE_FIELDS, "max_tokens", "max_batch")


def _limits_doc(limits: Limits) -> dict[str, object]:
    doc: dict[str, object] = {name: getattr(limits, name) for name in _LIMIT_FIELDS}
    doc["models"] = {
        model: {name: getattr(rates, name) for name in _RATE_FIELDS}
        for model, rates in sorted(limits.models.items())
    }
    doc["quotas"] = {_QUOTA_DOC_NAMES[name]: value for name, value in _quota_values(limits.quotas)}
    return doc


# Costs are kept in micro-dollars; the stored name says so, where the API's says USD.
_QUOTA_FIELDS = tuple(Quotas.__dataclass_fields__)
_QUOTA_DOC_NAMES = {
    name: name.replace("cost_", "cost_micro_usd_") if name.startswith("cost_") else name
    for name in _QUOTA_FIELDS
}


def _quota_values(quotas: Quotas) -> list[tuple[str, int]]:
    return [(name, value) for name in _QUOTA_FIELDS if (value := getattr(quotas, name)) is not None]


def _quotas_from(doc: object) -> Quotas:
    """A record from before quotas has none; unknown names are refused, not dropped."""
    if doc is None:
        return Quotas()
    if not isinstance(doc, dict):
        raise ValueError("limits.quotas is a JSON object")
    names = {stored: name for name, stored in _QUOTA_DOC_NAMES.items()}
    unknown = sorted(set(doc) - set(names))
    if unknown:
        raise ValueError(f"unknown quota {unknown[0]!r}")
    values = _limit_values(doc, tuple(doc))
    if any(value is not None and value < 0 for value in values.values()):
        raise ValueError("a quota is not negative")
    return Quotas(**{names[stored]: value for stored, value in values.items()})


def _limits_from(doc: object) -> Limits:
    """The inverse of `_limits_doc`. A record from before per-model limits has no `models`."""
    if not isinstance(doc, dict):
        raise ValueError("limits is a JSON object")
    models = doc.get("models", {})
    if not isinstance(models, dict):
        raise ValueError("limits.models is a JSON object")
    rates = {model: Rates(**_limit_values(entry, _RATE_FIELDS)) for model, entry in models.items()}
    quotas = _quotas_from(doc.get("quotas"))
    return Limits(**_limit_values(doc, _LIMIT_FIELDS), models=rates, quotas=quotas)


def _limit_values(doc: object, names: tuple[str, ...]) -> dict[str, int | None]:
    if not isinstance(doc, dict):
        raise ValueError("a model's limits are a JSON object")
    values: dict[str, int | None] = {}
    for name in names:
        value = doc.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ValueError(f"limit {name} is an integer or null")
        values[name] = value
    return values


def _text(doc: dict[str, object], name: str) -> str | None:
    value = doc.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} is a string or null")
    return value


def _str_list(value: object, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{name} is a list of strings")
    return list(value)


def _str_dict(value: object, name: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"{name} maps strings to strings")
    return {str(key): str(item) for key, item in value.items()}
