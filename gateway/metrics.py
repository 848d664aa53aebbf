"""The gateway's Prometheus metrics (`gateway_*`), one set per process.

With several worker processes (`workers` > 1) every worker writes its values
to files in PROMETHEUS_MULTIPROC_DIR and `/metrics` adds them up across
workers (prometheus_client's multiprocess mode; the directory is set by
`vllm-gateway serve` before any worker imports prometheus_client). With one
process the values live in memory.

Per-key labels are opt-in (`metrics.key_label`): a label per API key can
mean thousands of series.
"""

from __future__ import annotations

import functools
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

M = TypeVar("M", Counter, Gauge, Histogram)
CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# LLM latencies: tens of milliseconds for a first token, minutes for a long answer.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5, 5.0, 10.0)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
# What a failed key-store call was for (gateway/auth/key_cache.py): a fixed set, so that
# every series exists at 0 from the start and an alert's rate() sees the first failure.
KEY_STORE_OPERATIONS = ("read", "feed", "record_use")


class Metrics:
    """Every gateway metric, registered in one registry (a private one per app)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        key_label: bool = False,
        multiprocess: bool = False,
    ) -> None:
        # Decided at the serve edge (a worker started by the supervisor): `render` then
        # adds up every worker's files instead of reading this process's registry.
        self.multiprocess = multiprocess
        self.registry = registry or CollectorRegistry()
        self.key_label = key_label
        self._children: dict[tuple[int, tuple[str, ...]], object] = {}
        # A request line's labels -> its series (`request_series`).
        self._lines: dict[tuple[str, ...], RequestSeries] = {}
        r = self.registry
        request_labels = ["model", "route", "status", "tenant", *(["key_id"] if key_label else [])]
        self.requests = Counter(
            "gateway_requests",
            "Requests answered, by model, route, status and tenant.",
            request_labels,
            registry=r,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "From the request's arrival to its last byte.",
            ["model", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "From the request's arrival to the first byte of the answer sent to the client.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "gateway_inter_token_gap_seconds",
            "Gaps between two chunks of a streamed answer.",
            ["model"],
            buckets=GAP_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "gateway_prompt_tokens",
            "Prompt tokens, as the replicas reported them.",
            ["model", "tenant"],
            registry=r,
        )
        self.completion_tokens = Counter(
            "gateway_completion_tokens",
            "Completion tokens, as the replicas reported them.",
            ["model", "tenant"],
            registry=r,
        )
        self.usage_estimated = Counter(
            "gateway_usage_estimated",
            "Answered requests whose usage never arrived (a client that left mid-stream, a "
            "replica that reported none): charged and recorded at their token reservation.",
            ["model"],
            registry=r,
        )
        self.in_flight = Gauge(
            "gateway_requests_in_flight",
            "Requests being handled.",
            ["route"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.open_streams = Gauge(
            "gateway_open_streams",
            "Streamed answers being sent.",
            ["model"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.rate_limit_refusals = Counter(
            "gateway_rate_limit_refusals",
            "Requests refused with 429, by the kind of limit and whose limit it was.",
            ["kind", "scope"],
            registry=r,
        )
        self.auth_failures = Counter(
            "gateway_auth_failures",
            "Requests refused for their credentials, by reason: 401, or 429 for an address "
            "held back after wrong admin credentials (admin_throttled).",
            ["reason"],
            registry=r,
        )
        self.upstream_requests = Counter(
            "gateway_upstream_requests",
            "Requests sent to replicas, by outcome (ok, error: 5xx or failed).",
            ["model", "replica", "outcome"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors",
            "Failed requests to replicas, by kind (connect, timeout, busy, status, stream).",
            ["model", "replica", "kind"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "gateway_upstream_first_byte_seconds",
            "From sending a request to a replica to its first byte back.",
            ["model", "replica"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.replica_up = Gauge(
            "gateway_replica_up",
            "1 when the replica may be picked, 0 when it may not.",
            ["model", "replica"],
            multiprocess_mode="livemin",
            registry=r,
        )
        self.affinity_picks = Counter(
            "gateway_affinity_picks",
            "Replicas picked for a conversation (upstreams.affinity): its first choice, or "
            "the next in its ranking (first choice busy past max_load, or already tried).",
            ["model", "pick"],
            registry=r,
        )
        self.client_disconnects = Counter(
            "gateway_client_disconnects",
            "Clients that left before their answer ended.",
            ["model"],
            registry=r,
        )
        self.client_stalls = Counter(
            "gateway_client_stalls",
            "Requests ended because the client stopped reading (timeouts.client_write).",
            ["model"],
            registry=r,
        )
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Time spent in the gateway before the request went to a replica.",
            ["route"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.chunk_overhead = Counter(
            "gateway_chunk_overhead_seconds",
            "Time spent in the gateway on streamed chunks (with gateway_chunks_total: per chunk).",
            ["model"],
            registry=r,
        )
        self.chunks = Counter(
            "gateway_chunks", "Chunks of answers sent to clients.", ["model"], registry=r
        )
        self.limiter_backend_errors = Counter(
            "gateway_limiter_backend_errors",
            "Calls to the limits backend (Redis) that failed, by what the call was for "
            "and what the gateway did about it (open: admitted, closed: refused).",
            ["action", "outcome"],
            registry=r,
        )
        self.key_store_errors = Counter(
            "gateway_key_store_errors",
            "Calls to the key store that failed, by operation (read: a key's record; feed: the "
            "change feed that carries revocations was lost; record_use: a key's last use).",
            ["operation"],
            registry=r,
        )
        for operation in KEY_STORE_OPERATIONS:
            self.key_store_errors.labels(operation)

    def child(self, metric: M, *labels: str) -> M:
        """METRIC's series for LABELS, looked up once: `labels()` validates on every call,
        which costs more than the observation itself on the request path."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found  # type: ignore[return-value]

    def request_series(self, labels: tuple[str, ...]) -> RequestSeries:
        """The series of one request line, LABELS (model, route, status, tenant[, key_id]):
        found with one lookup per request instead of one per series."""
        series = self._lines.get(labels)
        if series is None:
            series = self._lines[labels] = RequestSeries(self, labels)
        return series

    def admin_refusal(self, reason: str) -> None:
        """Count an admin request refused for its credential: `admin_credentials` (wrong)
        or `admin_throttled` (its address held back)."""
        self.child(self.auth_failures, reason).inc()

    def key_store_error(self, operation: str) -> None:
        """Count a failed key-store call; OPERATION is one of KEY_STORE_OPERATIONS."""
        self.child(self.key_store_errors, operation).inc()

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        # Every worker's files, added up; this process's own registry is not read.
        combined = CollectorRegistry()
        MultiProcessCollector(combined)  # type: ignore[no-untyped-call]  # unannotated upstream
        return generate_latest(combined)


class RequestSeries:
    """Every series a request line counts in, each made when first counted: a series
    shows on /metrics only once something counted in it (as with `Metrics.child`)."""

    def __init__(self, metrics: Metrics, labels: tuple[str, ...]) -> None:
        self._metrics = metrics
        self._labels = labels
        self._model, self._route, self._tenant = labels[0], labels[1], labels[3]

    @functools.cached_property
    def requests(self) -> Counter:
        return self._metrics.child(self._metrics.requests, *self._labels)

    @functools.cached_property
    def duration(self) -> Histogram:
        return self._metrics.child(self._metrics.request_duration, self._model, self._route)

    @functools.cached_property
    def ttft(self) -> Histogram:
        return self._metrics.child(self._metrics.ttft, self._model)

    @functools.cached_property
    def overhead(self) -> Histogram:
        return self._metrics.child(self._metrics.overhead, self._route)

    @functools.cached_property
    def chunks(self) -> Counter:
        return self._metrics.child(self._metrics.chunks, self._model)

    @functools.cached_property
    def chunk_overhead(self) -> Counter:
        return self._metrics.child(self._metrics.chunk_overhead, self._model)

    @functools.cached_property
    def prompt_tokens(self) -> Counter:
        return self._metrics.child(self._metrics.prompt_tokens, self._model, self._tenant)

    @functools.cached_property
    def completion_tokens(self) -> Counter:
        return self._metrics.child(self._metrics.completion_tokens, self._model, self._tenant)

    @functools.cached_property
    def client_disconnects(self) -> Counter:
        return self._metrics.child(self._metrics.client_disconnects, self._model)

    @functools.cached_property
    def client_stalls(self) -> Counter:
        return self._metrics.child(self._metrics.client_stalls, self._model)


@functools.cache
def replica_label(url: str) -> str:
    """A replica's URL as a label: never with credentials someone put in it. Cached: it is
    asked for on every forwarded request, of a handful of URLs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest.split("/", 1)[0]:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
