"""The limits of a gateway process, built from its settings and closed with it."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.limits.admission import Admissions
from gateway.limits.limiter import RateLimiter
from gateway.limits.memory import MemoryRateLimiter
from gateway.metrics import Metrics
from gateway.principal import Limits, Rates
from gateway.settings import RatesSettings, Settings


def _rates(settings: RatesSettings) -> Rates:
    return Rates(
        settings.requests_per_minute, settings.tokens_per_minute, settings.concurrent_requests
    )


def tenant_limits(settings: Settings) -> dict[str, Limits]:
    limits = {}
    for tenant, given in settings.limits.tenants.items():
        rates = _rates(given)
        models = {model: _rates(per_model) for model, per_model in given.models.items()}
        limits[tenant] = Limits(
            requests_per_minute=rates.requests_per_minute,
            tokens_per_minute=rates.tokens_per_minute,
            concurrent_requests=rates.concurrent_requests,
            models=models,
        )
    return limits


def limiter_backend(settings: Settings, metrics: Metrics) -> RateLimiter:
    if settings.limits.backend == "redis":
        from gateway.limits.redis_limiter import RedisRateLimiter  # noqa: PLC0415 (optional backend)

        url = settings.limits_redis_url
        assert url is not None  # checked by the settings
        return RedisRateLimiter.connect(
            url,
            lease_ttl_s=settings.limits.lease_ttl,
            timeout_s=settings.limits.backend_timeout,
            # Counted with the other backend errors; the lease is retried next interval.
            on_renew_failure=metrics.limiter_backend_errors.labels("renew", "retried").inc,
        )
    return MemoryRateLimiter()


def admissions(
    settings: Settings,
    backend: RateLimiter,
    metrics: Metrics,
    tenants: Mapping[str, Limits] | None = None,
) -> Admissions:
    """TENANTS: the live tenant limits (gateway.tenants.directory); else the settings'."""
    return Admissions(
        backend,
        metrics,
        tenants=tenant_limits(settings) if tenants is None else tenants,
        fail_open=settings.limits.on_backend_error == "open",
    )
