"""The gateway's Prometheus metrics: one registry per app, passed to whoever counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.rate_limit_refusals = Counter(
            "gateway_rate_limit_refusals",
            "Requests refused with 429, by the kind of limit and whose limit it was.",
            ["kind", "scope"],
            registry=self.registry,
        )
        self.limiter_backend_errors = Counter(
            "gateway_limiter_backend_errors",
            "Calls to the limits backend (Redis) that failed, by what the call was for "
            "and what the gateway did about it (open: admitted, closed: refused).",
            ["action", "outcome"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
