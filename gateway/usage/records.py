"""What one request used, and the counts the usage stores add up."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """The `usage` a replica reported for one request."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class UsageKey:
    """One row of the usage tables: a principal (key id or JWT subject), its tenant,
    a model and a UTC day."""

    principal: str
    tenant: str
    model: str
    day: date


@dataclass(slots=True)
class UsageCounts:
    """Requests and tokens. A request whose usage the replica never reported (a client
    that left mid-stream) counts its token reservation, and counts in
    `estimated_requests` too: those tokens are the gateway's estimate, not the engine's."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_requests: int = 0

    def add(self, other: UsageCounts) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.estimated_requests += other.estimated_requests


@dataclass(frozen=True, slots=True)
class BatchId:
    """Names a batch so a store can apply it at most once: `writer` is one recorder's
    random id, `sequence` grows by one per new batch of that writer. A retry reuses
    the id, so a batch the store applied whose answer was lost is not counted twice."""

    writer: str
    sequence: int
