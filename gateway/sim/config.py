"""The simulator's tunables: one typed object built by the CLI (or a test) and passed in."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_MODEL = "sim-model"


@dataclass(frozen=True, slots=True)
class ReportedLoad:
    """What `/metrics` reports on top of the simulator's real load, so tests can route by load.

    `waiting` is added to the real `vllm:num_requests_waiting`; `kv_cache`,
    when not None, replaces the simulator's own `vllm:kv_cache_usage_perc`.
    """

    waiting: int = 0
    kv_cache: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.waiting, bool) or self.waiting < 0:
            raise ValueError("waiting must be an integer >= 0")
        # NaN fails the comparison too.
        if self.kv_cache is not None and not 0 <= self.kv_cache <= 1:
            raise ValueError("kv_cache must be between 0 and 1")


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything `create_sim_app` needs; validated once, at construction.

    `ttft_ms`, `itl_ms`, `fail_status`, `drop_after` and `stall_ms` are the
    defaults of the per-request knobs that `x-sim-*` headers override;
    `reported_load` is the starting value of what `PUT /sim/load` changes.
    """

    model: str = DEFAULT_MODEL
    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    api_key: str | None = None
    max_model_len: int = 4096
    default_max_tokens: int = 16
    max_num_seqs: int = 256
    # vLLM's --max-num-queued-reqs: a request that would wait behind this many is refused (503).
    max_num_queued_reqs: int | None = None
    embedding_dim: int = 384
    deterministic: bool = False
    fail_status: int | None = None
    drop_after: int | None = None
    stall_ms: float = 0.0
    # Prefill time per 1,000 prompt tokens not found in the prefix cache, added to TTFT.
    prefill_ms_per_1k: float = 0.0
    reported_load: ReportedLoad = field(default_factory=ReportedLoad)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must not be empty")
        for name in ("ttft_ms", "itl_ms", "stall_ms", "prefill_ms_per_1k"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("max_model_len", "default_max_tokens", "max_num_seqs", "embedding_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_num_queued_reqs is not None and self.max_num_queued_reqs < 0:
            raise ValueError("max_num_queued_reqs must be >= 0")
        if self.fail_status is not None and not 400 <= self.fail_status <= 599:
            raise ValueError("fail_status must be an HTTP error status (400-599)")
        if self.drop_after is not None and self.drop_after < 0:
            raise ValueError("drop_after must be >= 0")
        if self.api_key == "":
            raise ValueError("api_key must not be empty when given")
