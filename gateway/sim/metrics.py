"""The simulator's Prometheus metrics, named and labelled as vLLM names them.

Each app gets its own `CollectorRegistry`, so several simulators (or a
simulator and the gateway) can live in one process without clashing. The load
gauges show the engine's real counts with a `ReportedLoad` applied on top.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.sim.config import ReportedLoad

# vLLM's own bucket boundaries, so dashboards built on real replicas read the same.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
    50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

# All of vLLM's reasons are exported from the start; the simulator counts only the first
# two (vLLM 0.32 leaves `abort` at 0 when a client leaves: it counts no aborted request).
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")


class SimMetrics:
    """vLLM's engine metrics for one served model, plus a per-path request counter."""

    def __init__(self, model: str, reported: ReportedLoad) -> None:
        self.registry = CollectorRegistry()
        self.reported = reported
        self._running = self._waiting = 0
        self._kv_cache_usage = 0.0
        self._labels = {"model_name": model, "engine": "0"}
        self.running = self._gauge("vllm:num_requests_running", "Requests in execution batches.")
        self.waiting = self._gauge("vllm:num_requests_waiting", "Requests waiting to be processed.")
        self.kv_cache_usage = self._gauge("vllm:kv_cache_usage_perc", "KV-cache usage, 1 = 100%.")
        success = Counter(
            "vllm:request_success",
            "Finished requests, by finish reason.",
            [*self._labels, "finished_reason"],
            registry=self.registry,
        )
        self.finished = {
            reason: success.labels(**self._labels, finished_reason=reason)
            for reason in FINISHED_REASONS
        }
        self.prompt_tokens = self._counter("vllm:prompt_tokens", "Prefill tokens processed.")
        self.generation_tokens = self._counter("vllm:generation_tokens", "Tokens generated.")
        self.prefix_cache_queries = self._counter(
            "vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache."
        )
        self.prefix_cache_hits = self._counter(
            "vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache."
        )
        self.ttft = self._histogram(
            "vllm:time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS
        )
        self.itl = self._histogram(
            "vllm:inter_token_latency_seconds", "Inter-token latency.", ITL_BUCKETS
        )
        self.e2e = self._histogram(
            "vllm:e2e_request_latency_seconds", "End-to-end request latency.", E2E_BUCKETS
        )
        self._http_requests = Counter(
            "sim_http_requests",
            "HTTP requests the simulator received, by raw path (to prove what reached it).",
            ["path"],
            registry=self.registry,
        )
        self._publish_load()

    def _gauge(self, name: str, doc: str) -> Gauge:
        return Gauge(name, doc, list(self._labels), registry=self.registry).labels(**self._labels)

    def _counter(self, name: str, doc: str) -> Counter:
        metric = Counter(name, doc, list(self._labels), registry=self.registry)
        return metric.labels(**self._labels)

    def _histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        metric = Histogram(name, doc, list(self._labels), registry=self.registry, buckets=buckets)
        return metric.labels(**self._labels)

    def count_request(self, path: str) -> None:
        self._http_requests.labels(path=path).inc()

    def set_load(self, running: int, waiting: int, capacity: int) -> None:
        """The engine's real load; the gauges show it with `reported` applied."""
        self._running, self._waiting = running, waiting
        self._kv_cache_usage = running / capacity
        self._publish_load()

    def report(self, reported: ReportedLoad) -> None:
        self.reported = reported
        self._publish_load()

    def _publish_load(self) -> None:
        kv_cache = self.reported.kv_cache
        self.running.set(self._running)
        self.waiting.set(self._waiting + self.reported.waiting)
        self.kv_cache_usage.set(self._kv_cache_usage if kv_cache is None else kv_cache)

    def render(self) -> bytes:
        return generate_latest(self.registry)
