"""Authentication on the request path, built from the settings and opened in the lifespan.

The Redis client and the JWT libraries are imported only when the settings use
them: each costs megabytes of memory in every gateway process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx

from gateway.auth.credentials import Authenticator
from gateway.auth.errors import AuthError
from gateway.auth.key_cache import CachePolicy, KeyCache, StoreOperation
from gateway.keys.open import open_key_store
from gateway.keys.store import KeyStore
from gateway.principal import Principal
from gateway.settings import AuthSettings
from gateway.tenants.directory import TenantDirectory

if TYPE_CHECKING:
    from gateway.auth.jwt import JWTVerifier
    from gateway.auth.jwt_config import IssuerConfig

JWKS_TIMEOUT_S = 5.0


def _issuers(settings: AuthSettings) -> list[IssuerConfig]:
    if not settings.jwt_issuers:
        return []
    from gateway.auth.jwt_settings import issuer_config  # noqa: PLC0415 (optional feature)

    return [issuer_config(issuer) for issuer in settings.jwt_issuers]


class AuthService:
    """Owns the key store, its cache and the JWKS client for one gateway process."""

    def __init__(
        self,
        settings: AuthSettings,
        pepper: bytes,
        on_store_error: Callable[[StoreOperation], None],
        tenants: TenantDirectory | None = None,
    ) -> None:
        self._settings = settings
        # Narrows each principal to the models its tenant allows.
        self._tenants = tenants
        self._pepper = pepper
        # Counts failed key-store calls (gateway_key_store_errors_total).
        self._on_store_error = on_store_error
        # Built here so that bad issuer settings stop the gateway at start.
        self._issuers = _issuers(settings)
        self._store: KeyStore | None = None
        self._cache: KeyCache | None = None
        self._http: httpx.AsyncClient | None = None
        self._verifier: JWTVerifier | None = None
        self._authenticator: Authenticator | None = None

    async def open(self) -> None:
        self._store = await open_key_store(self._settings.key_store)
        cache = self._settings.key_cache
        policy = CachePolicy(refresh_after_s=cache.refresh_after, max_stale_s=cache.max_stale)
        self._cache = KeyCache(self._store, policy, on_store_error=self._on_store_error)
        self._cache.start()
        if self._issuers:
            from gateway.auth.jwt import JWTVerifier  # noqa: PLC0415 (optional feature)

            self._http = httpx.AsyncClient(timeout=JWKS_TIMEOUT_S)
            self._verifier = JWTVerifier(self._issuers, self._http)
        self._authenticator = Authenticator(self._cache, self._pepper, self._verifier)

    async def close(self) -> None:
        if self._cache is not None:
            await self._cache.stop()
        if self._http is not None:
            await self._http.aclose()
        if self._store is not None:
            await self._store.close()

    @property
    def store(self) -> KeyStore:
        if self._store is None:
            raise RuntimeError("the key store is used outside the lifespan")
        return self._store

    async def admin_subject(self, token: str, claim: str) -> str | None:
        """The subject of a valid JWT whose CLAIM is true, for the admin API; else None."""
        if self._verifier is None:
            return None
        try:
            claims, _ = await self._verifier.verified_claims(token)
        except AuthError:
            return None
        subject = claims.get("sub")
        return subject if claims.get(claim) is True and isinstance(subject, str) else None

    async def authenticate(self, header: bytes | None) -> Principal:
        if self._authenticator is None:
            raise RuntimeError("authentication is used outside the lifespan")
        principal = await self._authenticator.authenticate(header)
        return principal if self._tenants is None else self._tenants.restrict(principal)
