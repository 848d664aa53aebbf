"""A tenant's record as stored and exported, and its JSON form.

The JSON form is the admin API's tenant object minus `source`: limits (rates,
per-model rates, max_tokens, max_batch), quotas in USD, the allowed models
(null: every model) and metadata. It is what both stores keep, so a record read
back is exactly the record written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from gateway.keys.records import format_time, parse_time
from gateway.principal import Limits, Quotas, Rates

# Names a tenant can be created with: safe in URLs, logs, Redis keys and shells.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
_RATES = ("requests_per_minute", "tokens_per_minute", "concurrent_requests")
_QUOTAS = tuple(Quotas.__dataclass_fields__)
_COSTS = ("cost_per_day", "cost_per_month")

Source = Literal["settings", "store"]


def valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class TenantRecord:
    """A tenant. `models` None means every model; quotas' costs are micro-dollars."""

    name: str
    limits: Limits = field(default_factory=Limits)
    models: frozenset[str] | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    source: Source = "store"

    @property
    def quotas(self) -> Quotas:
        return self.limits.quotas


def limits_doc(limits: Limits) -> dict[str, object]:
    doc: dict[str, object] = {name: getattr(limits, name) for name in _RATES}
    doc["max_tokens"] = limits.max_tokens
    doc["max_batch"] = limits.max_batch
    doc["models"] = {
        model: {name: getattr(rates, name) for name in _RATES}
        for model, rates in sorted(limits.models.items())
    }
    return doc


def quotas_doc(quotas: Quotas) -> dict[str, object]:
    doc: dict[str, object] = {name: getattr(quotas, name) for name in _QUOTAS}
    for name in _COSTS:
        micro = getattr(quotas, name)
        doc[name] = None if micro is None else micro / 1_000_000
    return doc


def tenant_doc(record: TenantRecord) -> dict[str, object]:
    """The tenant object of the admin API and the export file."""
    return {
        "name": record.name,
        "limits": limits_doc(record.limits),
        "quotas": quotas_doc(record.quotas),
        "models": None if record.models is None else sorted(record.models),
        "metadata": dict(sorted(record.metadata.items())),
        "source": record.source,
        "created_at": _time(record.created_at),
        "updated_at": _time(record.updated_at),
    }


def record_to_json(record: TenantRecord) -> str:
    doc = tenant_doc(record)
    del doc["source"]
    doc["quotas"] = {name: getattr(record.quotas, name) for name in _QUOTAS}  # exact micro-USD
    return json.dumps(doc, sort_keys=True, ensure_ascii=False)


def record_from_json(text: str | bytes) -> TenantRecord:
    """The record `record_to_json` wrote; `ValueError` (or TypeError, KeyError) otherwise."""
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("a tenant record is a JSON object")
    name = doc["name"]
    if not isinstance(name, str) or not valid_name(name):
        raise ValueError("a tenant record needs a valid name")
    limits, quotas = doc["limits"], doc["quotas"]
    models, metadata = doc.get("models"), doc.get("metadata", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ValueError("tenant metadata maps strings to strings")
    if models is not None and not all(isinstance(m, str) for m in models):
        raise ValueError("tenant models are strings")
    return TenantRecord(
        name=name,
        limits=Limits(
            **{n: _count(limits.get(n)) for n in (*_RATES, "max_tokens", "max_batch")},
            models={
                str(model): Rates(*(_count(rates.get(n)) for n in _RATES))
                for model, rates in limits.get("models", {}).items()
            },
            quotas=Quotas(**{n: _count(quotas.get(n)) for n in _QUOTAS}),
        ),
        models=None if models is None else frozenset(models),
        metadata=metadata,
        created_at=parse_time(doc.get("created_at")),
        updated_at=parse_time(doc.get("updated_at")),
    )


def _count(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"a tenant limit is a whole number, not {value!r}")
    return value


def _time(value: datetime | None) -> str | None:
    return None if value is None else format_time(value)
