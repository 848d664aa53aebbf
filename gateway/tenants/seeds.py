"""The tenants the settings define (`limits.tenants`), as records of source `settings`."""

from __future__ import annotations

from gateway.limits.quota_setup import quotas_of
from gateway.principal import Limits, Rates
from gateway.settings import RatesSettings, Settings, TenantLimitsSettings
from gateway.tenants.records import TenantRecord


def _rates(given: RatesSettings) -> Rates:
    return Rates(given.requests_per_minute, given.tokens_per_minute, given.concurrent_requests)


def seed_record(name: str, given: TenantLimitsSettings) -> TenantRecord:
    rates = _rates(given)
    limits = Limits(
        requests_per_minute=rates.requests_per_minute,
        tokens_per_minute=rates.tokens_per_minute,
        concurrent_requests=rates.concurrent_requests,
        max_tokens=given.max_tokens,
        max_batch=given.max_batch,
        models={model: _rates(per_model) for model, per_model in given.models.items()},
        quotas=quotas_of(given.quotas),
    )
    models = None if given.allowed_models is None else frozenset(given.allowed_models)
    return TenantRecord(name=name, limits=limits, models=models, source="settings")


def seed_records(settings: Settings) -> dict[str, TenantRecord]:
    return {name: seed_record(name, given) for name, given in settings.limits.tenants.items()}
