"""The gateway's one settings object: a YAML file plus `VGW_*` environment overrides.

Nothing else in the gateway reads `os.environ`: the CLI (or a test) calls
`load_settings` once and hands the result on. Each section lives in the module
named after what it configures; everything is importable from here.
"""

from gateway.settings.access import (
    AdminSettings,
    AdminUISettings,
    AuthSettings,
    FailedSignInSettings,
    JWTIssuerSettings,
    KeyCacheSettings,
    KeyStoreSettings,
)
from gateway.settings.base import (
    ENV_NESTING,
    ENV_PREFIX,
    PLACEHOLDER_SECRETS,
    Secret,
    SettingsError,
    normalize_upstream_url,
)
from gateway.settings.limits import (
    LimitsSettings,
    PriceSettings,
    QuotaSettings,
    RateLimitSettings,
    RatesSettings,
    TenantLimitsSettings,
)
from gateway.settings.network import (
    EdgeSettings,
    ListenSettings,
    TimeoutSettings,
    TLSSettings,
    UpstreamTLSSettings,
)
from gateway.settings.operations import (
    TRACE_EXPORTERS,
    DrainSettings,
    LogSettings,
    MetricsSettings,
    ProbeSettings,
    ResponsesSettings,
    TracingSettings,
)
from gateway.settings.root import (
    Settings,
    load_settings,
)
from gateway.settings.upstreams import (
    DEFAULT_APIS,
    AffinitySettings,
    ApiFamily,
    DiscoverySettings,
    DnsSettings,
    HealthSettings,
    LoadSettings,
    ModelSettings,
    ReplicaSettings,
    SkyPilotClusterSettings,
    SkyServeSettings,
    UpstreamSettings,
    split_nameserver,
)

__all__ = [
    "DEFAULT_APIS",
    "ENV_NESTING",
    "ENV_PREFIX",
    "PLACEHOLDER_SECRETS",
    "TRACE_EXPORTERS",
    "AdminSettings",
    "AdminUISettings",
    "AffinitySettings",
    "ApiFamily",
    "AuthSettings",
    "DiscoverySettings",
    "DnsSettings",
    "DrainSettings",
    "EdgeSettings",
    "FailedSignInSettings",
    "HealthSettings",
    "JWTIssuerSettings",
    "KeyCacheSettings",
    "KeyStoreSettings",
    "LimitsSettings",
    "ListenSettings",
    "LoadSettings",
    "LogSettings",
    "MetricsSettings",
    "ModelSettings",
    "PriceSettings",
    "ProbeSettings",
    "QuotaSettings",
    "RateLimitSettings",
    "RatesSettings",
    "ReplicaSettings",
    "ResponsesSettings",
    "Secret",
    "Settings",
    "SettingsError",
    "SkyPilotClusterSettings",
    "SkyServeSettings",
    "TLSSettings",
    "TenantLimitsSettings",
    "TimeoutSettings",
    "TracingSettings",
    "UpstreamSettings",
    "UpstreamTLSSettings",
    "load_settings",
    "normalize_upstream_url",
    "split_nameserver",
]
