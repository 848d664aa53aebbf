"""Keys, JWTs, the credentials cache and the admin API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    SecretStr,
    model_validator,
)

from gateway.settings.base import Secret, _not_placeholder, _Strict
from gateway.settings.limits import LimitsSettings
from gateway.settings.network import ListenSettings


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


class FailedSignInSettings(_Strict):
    """Wrong admin credentials from one client address (an IPv6 one: its /64): past
    `limit` in `window` seconds, the address is refused with 429 until the window
    ends, whatever it presents. Counted per gateway process."""

    limit: int | None = Field(default=10, ge=1, le=1_000_000)  # None: not counted
    window: float = Field(default=300.0, gt=0, le=86400)


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
    failed_sign_ins: FailedSignInSettings = FailedSignInSettings()

    @model_validator(mode="after")
    def _listener_needs_admins(self) -> AdminSettings:
        if self.listen is not None and not (self.tokens or self.jwt_claim):
            raise ValueError("admin.listen needs admin.tokens or admin.jwt_claim")
        return self
