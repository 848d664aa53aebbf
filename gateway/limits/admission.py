"""Admission on the request path: the buckets a request counts against, the backend's
answer, and what happens when the backend cannot answer.

When Redis is unreachable the deployment's setting decides: fail-open admits,
fail-closed refuses with 503. Either way each failure is counted, a warning is
logged at most once per LOG_EVERY_S, and the backend is left alone for
PAUSE_S before it is asked again, so an outage costs requests no timeouts and
the gateway recovers by itself when Redis returns. There is never a silent
fallback to counting per replica.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gateway.errors import GatewayError, error_body
from gateway.limits.limiter import (
    Bucket,
    Demand,
    Grant,
    LimiterBackendError,
    Quota,
    RateLimiter,
    Refusal,
)
from gateway.metrics import Metrics
from gateway.principal import Limits, Principal

logger = logging.getLogger("gateway.limits")
LOG_EVERY_S = 30.0
PAUSE_S = 1.0
MAX_CACHED = 10_000
Headers = list[tuple[bytes, bytes]]


class RateLimited(GatewayError):
    """429. The error's `type` is the kind of limit, as OpenAI's are ("requests", "tokens")."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, kind: str, headers: dict[str, str]) -> None:
        super().__init__(message, headers=headers)
        self.kind = kind

    def body(self) -> bytes:
        return error_body(self.message, self.kind, None, self.code)


class LimiterUnavailable(GatewayError):
    status = 503
    error_type = "server_error"
    code = "rate_limiter_unavailable"


@dataclass(slots=True)
class Ticket:
    """An admitted request: its grant (None when admitted without the backend) and the
    `x-ratelimit-*` headers its response carries."""

    grant: Grant | None
    headers: Headers = field(default_factory=list)


def _bucket_name(scope: str, owner: str, model: str | None) -> str:
    # Lengths make the name unambiguous whatever characters a tenant or model uses.
    name = f"{scope}:{len(owner)}:{owner}"
    return name if model is None else f"{name}:{len(model)}:{model}"


def buckets_for(principal: Principal, tenant: Limits | None, model: str) -> tuple[Bucket, ...]:
    """Every set of counters this request is charged to; those without any rate are left out."""
    found: list[Bucket] = []
    owners = (
        (principal.kind, principal.id, principal.limits),
        ("tenant", principal.tenant, tenant),
    )
    for scope, owner, limits in owners:
        if limits is None:
            continue
        for rates, per_model in ((limits.rates, None), (limits.models.get(model), model)):
            if rates is not None and rates.any:
                found.append(Bucket(_bucket_name(scope, owner, per_model), rates))
    return tuple(found)


class Admissions:
    """Admits requests through a `RateLimiter` under the deployment's failure policy."""

    def __init__(
        self,
        backend: RateLimiter,
        metrics: Metrics,
        *,
        tenants: Mapping[str, Limits],
        fail_open: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self._metrics = metrics
        # Read on every request: the tenant directory swaps what it shows when tenants change.
        self._tenants = tenants
        self._fail_open = fail_open
        self._clock = clock
        self._paused_until = 0.0
        self._last_log = -math.inf
        self._unlogged = 0
        # Lease ids: unique across replicas (the prefix) and cheap to make.
        self._lease_prefix = os.urandom(8).hex() + "-"
        self._leases = itertools.count()
        # (kind, id, tenant, model) -> the principal's and the tenant's Limits it was built
        # from, and the buckets.
        self._buckets: dict[
            tuple[str, str, str, str], tuple[Limits, Limits | None, tuple[Bucket, ...]]
        ] = {}

    def _buckets_of(self, principal: Principal, model: str) -> tuple[Bucket, ...]:
        """The buckets for this principal and model, built once per version of its limits
        and its tenant's (a changed key or tenant comes with new Limits)."""
        key = (principal.kind, principal.id, principal.tenant, model)
        tenant = self._tenants.get(principal.tenant)
        cached = self._buckets.get(key)
        if cached is not None and cached[0] is principal.limits and cached[1] is tenant:
            return cached[2]
        buckets = buckets_for(principal, tenant, model)
        if len(self._buckets) >= MAX_CACHED:
            self._buckets.clear()
        self._buckets[key] = (principal.limits, tenant, buckets)
        return buckets

    async def admit(self, principal: Principal, model: str, tokens: int) -> Ticket:
        """Raises RateLimited (429) or, failing closed, LimiterUnavailable (503)."""
        buckets = self._buckets_of(principal, model)
        if not buckets:
            return Ticket(None)
        if self._clock() < self._paused_until:
            return self._unavailable("admit", None)
        try:
            lease = f"{self._lease_prefix}{next(self._leases)}"
            answer = await self._backend.admit(Demand(buckets, tokens), lease)
        except LimiterBackendError as exc:
            return self._unavailable("admit", exc)
        headers = quota_headers(answer.requests, answer.tokens)
        if isinstance(answer, Refusal):
            raise self._refused(answer, headers)
        return Ticket(answer, headers)

    async def finish(self, ticket: Ticket, tokens_used: int | None) -> None:
        """Release the lease and settle the tokens; a backend failure is counted and the
        lease then expires by its TTL."""
        if ticket.grant is None:
            return
        try:
            await self._backend.finish(ticket.grant, tokens_used)
        except LimiterBackendError as exc:
            self._failed("finish", "expired", exc)

    def _unavailable(self, action: str, exc: LimiterBackendError | None) -> Ticket:
        outcome = "open" if self._fail_open else "closed"
        self._failed(action, outcome, exc)
        if self._fail_open:
            return Ticket(None)
        raise LimiterUnavailable(
            "The gateway cannot check rate limits right now; try again shortly.",
            headers={"retry-after": str(math.ceil(PAUSE_S))},
        )

    def _failed(self, action: str, outcome: str, exc: LimiterBackendError | None) -> None:
        self._metrics.limiter_backend_errors.labels(action, outcome).inc()
        now = self._clock()
        if exc is not None:
            self._paused_until = now + PAUSE_S
        self._unlogged += 1
        if now - self._last_log >= LOG_EVERY_S:
            reason = f": {exc}" if exc is not None else ""
            logger.warning(
                "rate-limit backend unavailable (%d failed calls since the last warning), "
                "failing %s%s",
                self._unlogged,
                outcome,
                reason,
            )
            self._last_log = now
            self._unlogged = 0

    def _refused(self, refusal: Refusal, headers: Headers) -> RateLimited:
        scope = refusal.bucket.name.split(":", 1)[0]
        self._metrics.rate_limit_refusals.labels(refusal.kind, scope).inc()
        wait = max(refusal.retry_after_s, 0.001)
        names = {
            "requests": "requests per minute",
            "tokens": "tokens per minute",
            "concurrent_requests": "concurrent requests",
        }
        message = (
            f"Rate limit reached for {names[refusal.kind]} on this {_scope_words(refusal.bucket)}. "
            f"Please try again in {_duration(wait)}."
        )
        retry = {"retry-after": str(math.ceil(wait)), "retry-after-ms": str(math.ceil(wait * 1000))}
        quotas = {name.decode(): value.decode() for name, value in headers}
        return RateLimited(message, kind=refusal.kind, headers={**retry, **quotas})


def _scope_words(bucket: Bucket) -> str:
    # Read by the lengths `_bucket_name` wrote: an owner's name may hold colons itself.
    scope, _, rest = bucket.name.partition(":")
    length, _, rest = rest.partition(":")
    words = {"key": "API key", "tenant": "tenant", "jwt": "token subject"}.get(scope, scope)
    return f"{words} for this model" if len(rest) > int(length) else words


_HEADER_NAMES = {
    kind: tuple(f"x-ratelimit-{part}-{kind}".encode() for part in ("limit", "remaining", "reset"))
    for kind in ("requests", "tokens")
}


def quota_headers(requests: Quota | None, tokens: Quota | None) -> Headers:
    """OpenAI's `x-ratelimit-*` headers, for the limits that apply."""
    headers: Headers = []
    # A grant's two windows reset at the same instant: its text is made once.
    reset_s: float | None = None
    reset_text = b""
    for kind, quota in (("requests", requests), ("tokens", tokens)):
        if quota is not None:
            limit, remaining, reset = _HEADER_NAMES[kind]
            if quota.reset_s != reset_s:
                reset_s, reset_text = quota.reset_s, _duration(quota.reset_s).encode()
            headers.append((limit, b"%d" % quota.limit))
            headers.append((remaining, b"%d" % quota.remaining))
            headers.append((reset, reset_text))
    return headers


def _duration(seconds: float) -> str:
    """OpenAI's reset format: `120ms`, `6.5s`, `1m0s`."""
    # Rounded to the millisecond first, so that 59.9999 s reads 1m0s, not 60s.
    millis = max(0, round(seconds * 1000))
    if millis < 1000:
        return f"{millis}ms"
    minutes, rest = divmod(millis, 60_000)
    text = f"{rest / 1000:g}s"
    return f"{minutes}m{text}" if minutes else text
