"""The quota metrics: refusals and soft-threshold crossings, by whose quota and which.

Labels never carry a key id or a secret: `scope` is key, jwt or tenant, with the
tenant's name beside it (tenants are configured, so their number is bounded).
"""

from __future__ import annotations

from prometheus_client import Counter as PromCounter

from gateway.limits.quotas import Counter
from gateway.metrics import Metrics

LABELS = ["scope", "period", "kind", "tenant"]


class QuotaMetrics:
    """Registered in the gateway's own registry, beside the other `gateway_*` metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._errors = metrics.limiter_backend_errors
        self.refusals = PromCounter(
            "gateway_quota_refusals",
            "Requests refused with 429 because a daily or monthly quota was spent.",
            LABELS,
            registry=metrics.registry,
        )
        self.soft_crossings = PromCounter(
            "gateway_quota_soft_threshold_crossings",
            "Quotas whose use (with running requests' reservations) passed the soft "
            "threshold (limits.quota_soft_threshold) in their period: once per period.",
            LABELS,
            registry=metrics.registry,
        )

    def prepare(self, counters: list[Counter]) -> None:
        """Series at 0 for quotas known at start (tenants'), so rate() sees their first step."""
        for counter in counters:
            labels = (counter.scope, counter.period, counter.kind, counter.tenant)
            self.refusals.labels(*labels)
            self.soft_crossings.labels(*labels)

    def refused(self, counter: Counter) -> None:
        self.refusals.labels(counter.scope, counter.period, counter.kind, counter.tenant).inc()

    def crossed(self, counter: Counter) -> None:
        labels = (counter.scope, counter.period, counter.kind, counter.tenant)
        self.soft_crossings.labels(*labels).inc()

    def backend_error(self, action: str, outcome: str) -> None:
        self._errors.labels(action, outcome).inc()
