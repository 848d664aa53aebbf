"""What an admission asks for, what a backend grants or refuses, and the protocol both keep.

A request is admitted against every bucket that applies to it (its key, its key
for this model, its tenant, its tenant for this model) in one atomic step:
every bucket is charged, or none is.

Requests and tokens are counted in a sliding minute kept as sixty one-second
slots: at most `limit` in any sixty consecutive slots, exactly, however many
gateway replicas share the backend. A token reservation is charged to the slot
of its admission and settled there against the real usage when the request
ends. A concurrency lease is held until the request ends; leases carry an
expiry, renewed while the request runs, so a replica that dies frees its
leases within one TTL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.principal import Rates

WINDOW_S = 60


class LimiterBackendError(Exception):
    """The backend (Redis) could not be asked; the caller decides open or closed."""


@dataclass(frozen=True, slots=True)
class Bucket:
    """One set of counters: `name` is unique per principal or tenant, and model."""

    name: str
    rates: Rates

    def token_charge(self, tokens: int) -> int:
        """A reservation never exceeds the limit itself, so a large request can still pass
        once the minute is empty, and is then settled at its real size."""
        limit = self.rates.tokens_per_minute
        return tokens if limit is None else min(tokens, limit)


@dataclass(frozen=True, slots=True)
class Demand:
    buckets: tuple[Bucket, ...]
    tokens: int


@dataclass(frozen=True, slots=True)
class Quota:
    """One kind of limit as the `x-ratelimit-*` headers tell it: the bucket closest to it."""

    limit: int
    remaining: int
    reset_s: float


@dataclass(frozen=True, slots=True)
class Grant:
    """An admission: the slot its tokens were charged to and its lease id ("" if none)."""

    demand: Demand
    slot: int
    lease: str
    requests: Quota | None = None
    tokens: Quota | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused admission: which limit, on which bucket, and when to try again."""

    bucket: Bucket
    kind: str  # "requests", "tokens" or "concurrent_requests"
    retry_after_s: float
    requests: Quota | None = None
    tokens: Quota | None = None


class RateLimiter(Protocol):
    """A limits backend: in-process for one replica, Redis for many. Same semantics."""

    async def admit(self, demand: Demand, lease: str) -> Grant | Refusal:
        """Check and charge every bucket atomically; a grant holds LEASE on each
        concurrency bucket. Raises LimiterBackendError when the backend cannot answer."""
        ...

    async def finish(self, grant: Grant, tokens_used: int | None) -> None:
        """Release the grant's lease and settle its tokens to TOKENS_USED (None keeps
        the reservation). Raises LimiterBackendError."""
        ...

    async def close(self) -> None: ...


def charges(demand: Demand) -> Sequence[int]:
    return [bucket.token_charge(demand.tokens) for bucket in demand.buckets]
