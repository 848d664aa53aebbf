"""Metrics, logs, traces, drain, probes and stored responses."""

from __future__ import annotations

import importlib.util
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from gateway.settings.base import Secret, _Strict


class MetricsSettings(_Strict):
    """`/metrics`: on the client listener (`main`) or only on the admin one (`admin`).

    On the client listener it (and /readyz's per-model checks) is served to
    loopback peers and to `Bearer <token>` only; anyone else gets the 404 of an
    unknown route.
    """

    listener: Literal["main", "admin"] = "main"
    token: Secret = None
    # Off when a proxy on this host forwards outside clients: they would be loopback peers.
    trust_loopback: bool = True
    # A key-id label on gateway_requests_total: one series per key, so off by default.
    key_label: bool = False


class LogSettings(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


# What each tracing.protocol imports, and the extra that installs it.
TRACE_EXPORTERS = {
    "http/protobuf": ("opentelemetry.exporter.otlp.proto.http", "tracing"),
    "grpc": ("opentelemetry.exporter.otlp.proto.grpc", "tracing-grpc"),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


class TracingSettings(_Strict):
    """OpenTelemetry traces, exported over OTLP; off by default, and then never imported."""

    enabled: bool = False
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    # Of the traces the gateway starts; a trusted caller's sampling decision is kept.
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    # trust: continue a caller's W3C traceparent; ignore: every request starts a trace.
    incoming: Literal["trust", "ignore"] = "trust"
    service_name: str = Field(default="vllm-gateway", min_length=1)
    # Sent with every export (a collector's credentials): never logged.
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    # Seconds one export may take; also what shutdown waits, at most, to flush.
    export_timeout: float = Field(default=5.0, gt=0, le=60)
    # The key id on every request span (never the key itself); off: only the tenant.
    key_id: bool = False

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _exporter_installed(self) -> TracingSettings:
        if not self.enabled:
            return self
        module, extra = TRACE_EXPORTERS[self.protocol]
        if not (_installed("opentelemetry.sdk.trace") and _installed(module)):
            raise ValueError(
                f"tracing with protocol {self.protocol} needs the OpenTelemetry packages: "
                f"pip install 'vllm-gateway[{extra}]'"
            )
        return self


class DrainSettings(_Strict):
    """What SIGTERM (or SIGINT) does. `/readyz` answers 503 at once; the listeners keep
    accepting for `pre_stop_delay` seconds (long enough for load balancers to stop
    sending: 0 outside Kubernetes); then they close, and requests in flight have
    `grace` seconds to finish before they are ended (a stream with the mid-stream
    error event, an answer not yet started with 503). A second signal ends the drain
    at once. An orchestrator must allow pre_stop_delay + grace + about 10 s."""

    pre_stop_delay: float = Field(default=0.0, ge=0, le=600)
    grace: float = Field(default=30.0, ge=0, le=3600)


class ProbeSettings(_Strict):
    """`ready_requires_models`: /readyz is 503 while a configured model has no usable
    replica. Off for a fleet behind one Service (Kubernetes): readiness then reflects
    the gateway itself (stores, drain), and a model's outage is the gateway's own
    clear 503 to its clients rather than every pod leaving the Service at once. The
    per-model states stay in the body and in gateway_replica_up either way."""

    ready_requires_models: bool = True


class ResponsesSettings(_Strict):
    """OpenAI's Responses API: how long the gateway remembers where each response lives
    (its replica and owner) for GET, cancel and `previous_response_id`. Kept in Redis when
    the keys are (every gateway replica routes every id), else in this process."""

    # Seconds; past it a stored response's id is a 404 (vLLM keeps it in replica memory).
    store_ttl: float = Field(default=86_400.0, ge=60, le=30 * 86_400)
    # In-process store only: the newest this many ids are kept.
    memory_max_entries: int = Field(default=100_000, ge=100, le=10_000_000)
