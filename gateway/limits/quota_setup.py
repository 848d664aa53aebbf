"""The quotas of a gateway process, built from its settings and closed with it.

Quotas live where the limits live: in this process (`limits.backend: memory`) or
in the limits' Redis, shared by every replica.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from gateway.limits.quota_admission import QuotaAdmissions
from gateway.limits.quota_memory import MemoryQuotas
from gateway.limits.quota_metrics import QuotaMetrics
from gateway.limits.quotas import Price, QuotaBackend, usd_to_micro
from gateway.metrics import Metrics
from gateway.principal import Quotas
from gateway.settings import QuotaSettings, Settings


def quotas_of(settings: QuotaSettings) -> Quotas:
    values = settings.model_dump()
    for name in ("cost_per_day", "cost_per_month"):
        if values[name] is not None:
            values[name] = usd_to_micro(values[name])
    return Quotas(**values)


def tenant_quotas(settings: Settings) -> dict[str, Quotas]:
    found = {}
    for tenant, given in settings.limits.tenants.items():
        quotas = quotas_of(given.quotas)
        if quotas.items():
            found[tenant] = quotas
    return found


def prices(settings: Settings) -> dict[str, Price]:
    # Through the decimal text: 0.1 USD per million tokens is exactly 0.1 micro-dollars.
    return {
        model: Price(Decimal(repr(price.prompt)), Decimal(repr(price.completion)))
        for model, price in settings.pricing.items()
    }


def quota_backend(settings: Settings) -> QuotaBackend:
    if settings.limits.backend == "redis":
        from gateway.limits.quota_redis import RedisQuotas  # noqa: PLC0415 (optional backend)

        url = settings.limits_redis_url
        assert url is not None  # checked by the settings
        return RedisQuotas.connect(url, timeout_s=settings.limits.backend_timeout)
    return MemoryQuotas()


def quota_admissions(
    settings: Settings,
    backend: QuotaBackend,
    metrics: Metrics,
    tenants: Mapping[str, Quotas] | None = None,
) -> QuotaAdmissions:
    """TENANTS: the live tenant quotas (gateway.tenants.directory); else the settings'."""
    return QuotaAdmissions(
        backend,
        QuotaMetrics(metrics),
        tenants=tenant_quotas(settings) if tenants is None else tenants,
        prices=prices(settings),
        soft_threshold=settings.limits.quota_soft_threshold,
        fail_open=settings.limits.on_backend_error == "open",
    )
