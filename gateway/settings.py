"""The gateway's one settings object: a YAML file plus `VGW_*` environment overrides.

Nothing else in the gateway reads `os.environ`: the CLI (or a test) calls
`load_settings` once and hands the result on.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "VGW_"
ENV_NESTING = "__"

# Values copied from examples and templates; a deployment that still carries one is misconfigured.
PLACEHOLDER_SECRETS = frozenset(
    {"changeme", "change-me", "changethis", "change_me", "replace-me", "secret", "xxx", "todo"}
)


class SettingsError(Exception):
    """Settings that cannot start the gateway; the message names every bad field."""


def _not_placeholder(value: SecretStr | None) -> SecretStr | None:
    if value is not None:
        raw = value.get_secret_value()
        if not raw.strip():
            raise ValueError("must not be empty")
        if raw.strip().lower() in PLACEHOLDER_SECRETS:
            raise ValueError("is a placeholder value; set a real secret")
    return value


Secret = Annotated[SecretStr | None, AfterValidator(_not_placeholder)]


def normalize_upstream_url(value: str) -> str:
    """Accept `host:port`, `http://host[:port][/prefix]` or `https://...`; return a base URL.

    A trailing `/v1` is dropped: operators often paste an OpenAI-style base URL,
    and the gateway appends the request's own `/v1/...` path.
    """
    text = value.strip()
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"scheme must be http or https, not {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("has no host")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query or fragment")
    path = parts.path.rstrip("/")
    path = path.removesuffix("/v1")
    return f"{parts.scheme}://{parts.netloc}{path}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSSettings(_Strict):
    """HTTPS on the gateway's listener; `client_ca` turns on client-certificate checks."""

    certfile: Path | None = None
    keyfile: Path | None = None
    client_ca: Path | None = None

    @model_validator(mode="after")
    def _complete(self) -> TLSSettings:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile must be set together")
        if self.client_ca is not None and self.certfile is None:
            raise ValueError("client_ca needs certfile and keyfile")
        for path in (self.certfile, self.keyfile, self.client_ca):
            if path is not None and not path.is_file():
                raise ValueError(f"file not found: {path}")
        return self

    @property
    def enabled(self) -> bool:
        return self.certfile is not None


class ListenSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    tls: TLSSettings = TLSSettings()


class EdgeSettings(_Strict):
    """HTTP limits on every listener (client and admin), enforced before any routing.

    A request line over `max_url_bytes` is answered 414, a header section over
    `max_header_bytes` or `max_headers` 431; a head not complete `header_timeout`
    seconds after the connection opened (or, on a kept-alive one, after its first
    byte) 408, a body not complete `body_timeout` seconds after it began 408.
    `max_connections` is per listener in each process; one more is answered 503.
    """

    max_url_bytes: int = Field(default=8 * 1024, ge=256, le=1024 * 1024)
    max_header_bytes: int = Field(default=32 * 1024, ge=1024, le=1024 * 1024)
    max_headers: int = Field(default=100, ge=8, le=10_000)
    header_timeout: float = Field(default=10.0, gt=0, le=600)
    body_timeout: float = Field(default=60.0, gt=0, le=3600)
    keep_alive_timeout: int = Field(default=20, ge=1, le=3600)
    max_connections: int = Field(default=10_000, ge=1, le=1_000_000)


class TimeoutSettings(_Strict):
    """Seconds. `first_byte` covers a whole non-streamed generation, so it is long."""

    connect: float = Field(default=5.0, gt=0)
    first_byte: float = Field(default=300.0, gt=0)
    idle: float = Field(default=120.0, gt=0)
    # A client that stops reading: how long one write to it may wait before the
    # gateway ends the request (never blamed on the replica).
    client_write: float = Field(default=30.0, gt=0)


class UpstreamTLSSettings(_Strict):
    ca_bundle: Path | None = None
    verify: bool = True

    @field_validator("ca_bundle")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file not found: {value}")
        return value


class ReplicaSettings(_Strict):
    url: Annotated[str, AfterValidator(normalize_upstream_url)]
    api_key: Secret = None


class SkyPilotClusterSettings(_Strict):
    """Replicas on a SkyPilot cluster: the endpoint of `port` on `cluster`."""

    cluster: str = Field(min_length=1)
    port: int = Field(default=8000, ge=1, le=65535)


class SkyServeSettings(_Strict):
    """A SkyServe service: each READY replica (`replicas`: the gateway balances), or the
    service's own load balancer as one replica (`service`)."""

    service: str = Field(min_length=1)
    mode: Literal["replicas", "service"] = "replicas"


def split_nameserver(value: str) -> tuple[str, int]:
    """`ip`, `ip:port` or `[ipv6]:port` -> (ip, port); port 53 when none is given."""
    text = value.strip()
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdecimal():
                raise ValueError(f"nameserver {value!r}: expected [ipv6]:port")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, given = text.partition(":")
        if not given.isdecimal():
            raise ValueError(f"nameserver {value!r}: the port is not a number")
        port = int(given)
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(f"nameserver {value!r}: give an IP address, not a name") from exc
    if not 1 <= port <= 65535:
        raise ValueError(f"nameserver {value!r}: port out of range")
    return host, port


def _nameserver(value: str) -> str:
    split_nameserver(value)
    return value.strip()


class DnsSettings(_Strict):
    """Replicas behind a DNS name, such as a Kubernetes headless Service: every address
    of `name` (A and AAAA) on `port`, or with `srv`, every target and port of its SRV
    records. `nameservers` (`ip[:port]`) replace the system resolver (/etc/resolv.conf)."""

    name: str = Field(min_length=1, max_length=253)
    port: int | None = Field(default=None, ge=1, le=65535)
    scheme: Literal["http", "https"] = "http"
    srv: bool = False
    # None: upstreams.discovery_interval.
    interval: float | None = Field(default=None, gt=0, le=86400)
    timeout: float = Field(default=5.0, gt=0, le=60)
    nameservers: list[Annotated[str, AfterValidator(_nameserver)]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _port_unless_srv(self) -> DnsSettings:
        if self.srv and self.port is not None:
            raise ValueError("srv records carry the port: give no port with srv: true")
        if not self.srv and self.port is None:
            raise ValueError("give the replicas' port (or srv: true)")
        return self


class DiscoverySettings(_Strict):
    """One source of replicas; found endpoints join after their first healthy check."""

    skypilot_cluster: SkyPilotClusterSettings | None = None
    skyserve: SkyServeSettings | None = None
    dns: DnsSettings | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> DiscoverySettings:
        given = [self.skypilot_cluster, self.skyserve, self.dns]
        if sum(source is not None for source in given) != 1:
            raise ValueError("give exactly one of skypilot_cluster, skyserve or dns")
        return self


ApiFamily = Literal[
    "chat",
    "completions",
    "embeddings",
    "messages",
    "responses",
    "rerank",
    "score",
    "embed_v2",
    "transcriptions",
    "translations",
]
DEFAULT_APIS: tuple[ApiFamily, ...] = ("chat", "completions", "embeddings", "messages", "responses")


class ModelSettings(_Strict):
    name: str = Field(min_length=1)
    replicas: list[ReplicaSettings] = Field(default_factory=list)
    discovery: list[DiscoverySettings] = Field(default_factory=list)
    # The vLLM --api-key of discovered replicas (static ones may carry their own).
    api_key: Secret = None
    # The API families forwarded for this model (gateway.proxy.apis): pooling and audio
    # routes (rerank, score, embed_v2, transcriptions, translations) only when named here.
    apis: list[ApiFamily] = Field(default_factory=lambda: list(DEFAULT_APIS), min_length=1)


class HealthSettings(_Strict):
    """Active `/health` checks, and passive ejection on failed requests."""

    interval: float = Field(default=5.0, gt=0, le=3600)
    timeout: float = Field(default=3.0, gt=0, le=60)
    healthy_threshold: int = Field(default=1, ge=1, le=100)
    unhealthy_threshold: int = Field(default=3, ge=1, le=100)
    # Consecutive connection failures or 5xx answers that take a replica out until a
    # health check passes.
    eject_after: int = Field(default=3, ge=1, le=1000)


class LoadSettings(_Strict):
    """Each replica's own load, read from its `/metrics` (vLLM's gauges)."""

    # least_outstanding: fewest requests in flight from this gateway; load_aware: also the
    # replica's waiting queue and KV-cache use, so other clients' load counts too.
    picking: Literal["least_outstanding", "load_aware"] = "least_outstanding"
    scrape_interval: float = Field(default=2.0, gt=0, le=3600)
    # When every replica of a model has more than this many requests waiting, refuse at
    # once with `shed_status` instead of queueing. None: never.
    shed_waiting_above: int | None = Field(default=None, ge=0)
    shed_status: Literal[429, 503] = 503
    shed_retry_after: int = Field(default=2, ge=1, le=3600)


class UpstreamSettings(_Strict):
    health: HealthSettings = HealthSettings()
    load: LoadSettings = LoadSettings()
    # Another replica is tried only when the request provably never reached an engine
    # (a connection that failed, or vLLM's own 503 for a full queue) and nothing was sent.
    retries: int = Field(default=2, ge=0, le=10)
    discovery_interval: float = Field(default=30.0, gt=0, le=86400)


class LimitsSettings(_Strict):
    requests_per_minute: int | None = Field(default=None, ge=0)
    tokens_per_minute: int | None = Field(default=None, ge=0)
    concurrent_requests: int | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_batch: int | None = Field(default=None, ge=1)


class RatesSettings(_Strict):
    requests_per_minute: int | None = Field(default=None, ge=0)
    tokens_per_minute: int | None = Field(default=None, ge=0)
    concurrent_requests: int | None = Field(default=None, ge=0)


class QuotaSettings(_Strict):
    """Quotas per UTC day and calendar month (UTC); costs in USD, from `pricing`."""

    tokens_per_day: int | None = Field(default=None, ge=0, le=10**15)
    tokens_per_month: int | None = Field(default=None, ge=0, le=10**15)
    prompt_tokens_per_day: int | None = Field(default=None, ge=0, le=10**15)
    prompt_tokens_per_month: int | None = Field(default=None, ge=0, le=10**15)
    completion_tokens_per_day: int | None = Field(default=None, ge=0, le=10**15)
    completion_tokens_per_month: int | None = Field(default=None, ge=0, le=10**15)
    requests_per_day: int | None = Field(default=None, ge=0, le=10**15)
    requests_per_month: int | None = Field(default=None, ge=0, le=10**15)
    cost_per_day: float | None = Field(default=None, ge=0, le=10**9, allow_inf_nan=False)
    cost_per_month: float | None = Field(default=None, ge=0, le=10**9, allow_inf_nan=False)


class PriceSettings(_Strict):
    """USD per million prompt tokens and per million completion tokens."""

    prompt: float = Field(ge=0, le=10**6, allow_inf_nan=False)
    completion: float = Field(ge=0, le=10**6, allow_inf_nan=False)


class TenantLimitsSettings(RatesSettings):
    """A tenant's limits, shared by all its keys and JWT subjects; `models` adds
    per-model rates on top of the tenant-wide ones."""

    models: dict[str, RatesSettings] = Field(default_factory=dict)
    quotas: QuotaSettings = QuotaSettings()
    # Sequences one request of the tenant's keys may ask for, unless a key says otherwise.
    max_batch: int | None = Field(default=None, ge=1)
    # The max_tokens cap of the tenant's keys and JWT subjects that have none of their own.
    max_tokens: int | None = Field(default=None, ge=1)
    # Models the tenant's keys and JWT subjects may use (on top of their own lists); None: all.
    allowed_models: list[str] | None = None


class RateLimitSettings(_Strict):
    """How limits are kept. `memory` serves one process; replicas share `redis`.

    When Redis cannot be reached, `on_backend_error` admits requests (`open`) or
    refuses them with 503 (`closed`); either way it is counted and logged.
    """

    backend: Literal["memory", "redis"] = "memory"
    # Defaults to auth.key_store.redis_url.
    redis_url: Secret = None
    on_backend_error: Literal["open", "closed"] = "open"
    backend_timeout: float = Field(default=0.5, gt=0, le=10)
    lease_ttl: float = Field(default=30.0, ge=3, le=3600)
    # A request over its key's max_tokens is lowered to it (`clamp`) or refused (`refuse`).
    max_tokens_policy: Literal["clamp", "refuse"] = "clamp"
    # Completion tokens reserved for a request that names no max_tokens under no cap.
    default_completion_reserve: int = Field(default=1024, ge=1)
    # Sequences one request may ask for (prompts x max(n, best_of), or embedding inputs),
    # unless the key or its tenant says otherwise; OpenAI's own bound on embedding inputs.
    max_batch: int = Field(default=2048, ge=1)
    tenants: dict[str, TenantLimitsSettings] = Field(default_factory=dict)
    # A quota whose use (with reservations) passes this share of it is reported.
    quota_soft_threshold: float = Field(default=0.8, gt=0, le=1)


class KeyStoreSettings(_Strict):
    """Where API keys live: a SQLite file (one replica) or Redis (shared by replicas)."""

    backend: Literal["sqlite", "redis"] = "sqlite"
    sqlite_path: Path = Path("data/keys.db")
    redis_url: Secret = None
    # Seconds between PINGs on the Redis change feed; three unanswered ones mean the
    # connection is dead (even half-open): the cache is distrusted and the feed reopened.
    redis_ping_interval: float = Field(default=1.0, gt=0, le=60)

    @model_validator(mode="after")
    def _redis_needs_url(self) -> KeyStoreSettings:
        if self.backend == "redis" and self.redis_url is None:
            raise ValueError("redis_url is required when backend is redis")
        return self


class JWTIssuerSettings(_Strict):
    """A trusted token issuer; exactly one of hs_secret, public_key_pem, jwks_url."""

    issuer: str = Field(min_length=1)
    algorithms: list[str] = Field(min_length=1)
    hs_secret: Secret = None
    public_key_pem: str | None = None
    jwks_url: str | None = None
    audiences: list[str] = Field(default_factory=list)
    leeway_s: float = Field(default=30.0, ge=0, le=600)
    claims: dict[str, str] = Field(default_factory=dict)
    default_tenant: str = "default"
    default_models: list[str] | None = None
    tenant_defaults: dict[str, LimitsSettings] = Field(default_factory=dict)
    # The JWKS is refetched after jwks_ttl_s, and at once for a token naming an unknown
    # `kid` (a rotated-in key), but never twice within jwks_min_refresh_interval_s.
    jwks_ttl_s: float = Field(default=300.0, gt=0, le=86400)
    jwks_min_refresh_interval_s: float = Field(default=2.0, ge=0, le=3600)


class KeyCacheSettings(_Strict):
    """How long a gateway process trusts a cached API-key record, in seconds.

    A record is used without a store read for `refresh_after`, then re-read in the
    background. While the store cannot be read it is served until `max_stale`, then
    the key is refused with 503: the longest a revocation can go unseen by a replica
    cut off from the store. Larger rides out longer outages; smaller revokes sooner.
    """

    refresh_after: float = Field(default=1.0, gt=0, le=60)
    max_stale: float = Field(default=2.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _stale_after_refresh(self) -> KeyCacheSettings:
        if self.max_stale < self.refresh_after:
            raise ValueError("max_stale must be at least refresh_after")
        return self


class AuthSettings(_Strict):
    # HMAC key for API-key secrets: losing or changing it invalidates every key.
    pepper: Secret = None
    key_store: KeyStoreSettings = KeyStoreSettings()
    key_cache: KeyCacheSettings = KeyCacheSettings()
    jwt_issuers: list[JWTIssuerSettings] = Field(default_factory=list)


class AdminUISettings(_Strict):
    """The admin web UI at /admin/ui: sign-in sessions kept in the process's memory.

    A session ends after `session_idle_seconds` without a request, and at the
    latest `session_max_age_seconds` after sign-in; past `max_sessions` the least
    recently used one goes. With `workers > 1` the UI is off (a session lives in one
    process, and the admin listener's requests go to any of them).
    """

    enabled: bool = True
    session_idle_seconds: int = Field(default=900, ge=30, le=86_400)
    session_max_age_seconds: int = Field(default=28_800, ge=60, le=7 * 86_400)
    max_sessions: int = Field(default=1000, ge=1, le=100_000)


class AdminSettings(_Strict):
    """The admin API: at /admin on the gateway's listener, or only on its own `listen`.

    No tokens (and no JWT claim): nobody is an admin.
    """

    tokens: list[Annotated[SecretStr, AfterValidator(_not_placeholder)]] = Field(
        default_factory=list
    )
    # A JWT from a configured issuer whose claim of this name is `true` is an admin too.
    jwt_claim: str | None = None
    listen: ListenSettings | None = None
    ui: AdminUISettings = AdminUISettings()

    @model_validator(mode="after")
    def _listener_needs_admins(self) -> AdminSettings:
        if self.listen is not None and not (self.tokens or self.jwt_claim):
            raise ValueError("admin.listen needs admin.tokens or admin.jwt_claim")
        return self


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


class Settings(_Strict):
    listen: ListenSettings = ListenSettings()
    edge: EdgeSettings = EdgeSettings()
    timeouts: TimeoutSettings = TimeoutSettings()
    upstream_tls: UpstreamTLSSettings = UpstreamTLSSettings()
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    # multipart/form-data uploads (audio routes): OpenAI's own limit is 25 MB.
    max_upload_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    # 0 means no limit; vLLM replicas take hundreds of concurrent streams each.
    upstream_max_connections: int = Field(default=0, ge=0)
    # Which HTTP client forwards requests: aiohttp, or the gateway's own HTTP/1.1 client
    # (gateway.proxy.h1pool), cheaper per request. Health checks use aiohttp either way.
    upstream_client: Literal["aiohttp", "native"] = "aiohttp"
    models: list[ModelSettings] = Field(default_factory=list)
    # Another name for one or more models, tried in order (gateway.upstreams.aliases).
    aliases: dict[str, list[str]] = Field(default_factory=dict)
    upstreams: UpstreamSettings = UpstreamSettings()
    auth: AuthSettings = AuthSettings()
    admin: AdminSettings = AdminSettings()
    limits: RateLimitSettings = RateLimitSettings()
    # Model -> price, for cost quotas; a model without a price costs nothing.
    pricing: dict[str, PriceSettings] = Field(default_factory=dict)
    metrics: MetricsSettings = MetricsSettings()
    log: LogSettings = LogSettings()
    tracing: TracingSettings = TracingSettings()
    drain: DrainSettings = DrainSettings()
    probes: ProbeSettings = ProbeSettings()
    responses: ResponsesSettings = ResponsesSettings()
    # Gateway processes on this host, sharing its port. More than one are replicas:
    # their keys and limits must be in Redis.
    workers: int = Field(default=1, ge=1, le=256)

    @model_validator(mode="after")
    def _workers_share_through_redis(self) -> Settings:
        if self.workers == 1:
            return self
        if not self.models:
            raise ValueError("workers > 1 needs models (the embedded simulator is for one process)")
        if self.limits.backend != "redis" or self.auth.key_store.backend != "redis":
            raise ValueError(
                "workers > 1 needs limits.backend: redis and auth.key_store.backend: redis "
                "(in-process limits and SQLite key caches cannot be shared between processes)"
            )
        return self

    @model_validator(mode="after")
    def _admin_metrics_need_the_admin_listener(self) -> Settings:
        if self.metrics.listener == "admin" and self.admin.listen is None:
            raise ValueError("metrics.listener: admin needs admin.listen")
        return self

    @model_validator(mode="after")
    def _redis_limits_need_a_url(self) -> Settings:
        if self.limits.backend == "redis" and self.limits_redis_url is None:
            raise ValueError(
                "limits.redis_url (or auth.key_store.redis_url) is required "
                "when limits.backend is redis"
            )
        return self

    @property
    def limits_redis_url(self) -> str | None:
        url = self.limits.redis_url or self.auth.key_store.redis_url
        return None if url is None else url.get_secret_value()

    @model_validator(mode="after")
    def _keys_need_a_pepper(self) -> Settings:
        # Without models the embedded default runs and makes its own pepper.
        pepper = self.auth.pepper
        if self.models and pepper is None:
            raise ValueError("auth.pepper is required (32 or more random characters)")
        if pepper is not None and len(pepper.get_secret_value()) < 32:
            raise ValueError("auth.pepper must be 32 or more characters")
        return self

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelSettings]) -> list[ModelSettings]:
        names = [model.name for model in models]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique; repeated: {', '.join(duplicates)}")
        return models

    @model_validator(mode="after")
    def _aliases_name_models(self) -> Settings:
        models = {model.name for model in self.models}
        for alias, targets in self.aliases.items():
            _check_alias(alias, targets, models, self.aliases)
        return self


def _check_alias(
    alias: str, targets: list[str], models: set[str], aliases: dict[str, list[str]]
) -> None:
    """An alias names configured models only: no alias of an alias (no cycles), no
    alias that hides a model, no empty or repeated target."""
    if not alias:
        raise ValueError("aliases: an alias name must be a non-empty string")
    if alias in models:
        raise ValueError(f"aliases: '{alias}' is a model's name; an alias needs a name of its own")
    if not targets:
        raise ValueError(f"aliases: '{alias}' needs at least one model")
    for target in targets:
        if target in aliases:
            raise ValueError(f"aliases: '{alias}' names the alias '{target}'; name models only")
        if target not in models:
            raise ValueError(f"aliases: '{alias}' names '{target}', which is not in models")
    if len(set(targets)) != len(targets):
        raise ValueError(f"aliases: '{alias}' names a model more than once")


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """`VGW_LISTEN__PORT=9000` becomes `{"listen": {"port": "9000"}}`; lists and mappings
    are YAML."""
    tree: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = key[len(ENV_PREFIX) :].lower().split(ENV_NESTING)
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SettingsError(f"{key}: conflicts with another VGW_ variable")
            node = child
        node[path[-1]] = _env_value(raw)
    return tree


def _env_value(raw: str) -> Any:
    """A value in `[...]` or `{...}` is YAML (a list or a mapping), `null` or `~` is None;
    anything else stays the exact text, which the settings convert, so a secret made of
    digits or holding a colon is not read as something else."""
    text = raw.strip()
    if text in ("null", "~"):
        return None
    if not text.startswith(("[", "{")):
        return raw
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return raw


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            merged[key] = _merge(current, value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must hold a mapping at the top level")
    return data


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        lines.append(f"  {field}: {error['msg']}")
    return "invalid settings:\n" + "\n".join(lines)


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Load and validate the settings; raise SettingsError naming each bad field.

    `environ` defaults to the process environment: this is the one place that reads it.
    """
    data = _read_yaml(path) if path is not None else {}
    data = _merge(data, _env_overrides(os.environ if environ is None else environ))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from exc
