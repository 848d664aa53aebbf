"""Authentication on the request path, built from the settings and opened in the lifespan."""

from __future__ import annotations

import httpx

from gateway.admin.audit import AuditLog, RedisAuditLog, SqliteAuditLog
from gateway.auth.credentials import Authenticator, KeyCache
from gateway.auth.jwt import AuthError, JWTVerifier
from gateway.auth.jwt_config import ClaimNames, IssuerConfig
from gateway.auth.principal import Limits, Principal
from gateway.keys.redis_store import RedisKeyStore
from gateway.keys.sqlite import SqliteKeyStore
from gateway.keys.store import KeyStore
from gateway.settings import AuthSettings, JWTIssuerSettings, KeyStoreSettings, LimitsSettings

JWKS_TIMEOUT_S = 5.0


async def open_key_store(settings: KeyStoreSettings) -> KeyStore:
    if settings.backend == "redis":
        assert settings.redis_url is not None  # checked by the settings
        return RedisKeyStore.connect(settings.redis_url.get_secret_value())
    settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    return await SqliteKeyStore.open(settings.sqlite_path)


async def open_audit_log(settings: KeyStoreSettings) -> AuditLog:
    """The admin audit log lives beside the keys: the same SQLite file or Redis."""
    if settings.backend == "redis":
        assert settings.redis_url is not None  # checked by the settings
        return RedisAuditLog.connect(settings.redis_url.get_secret_value())
    return await SqliteAuditLog.open(settings.sqlite_path)


def limits(settings: LimitsSettings) -> Limits:
    return Limits(**settings.model_dump())


def issuer_config(settings: JWTIssuerSettings) -> IssuerConfig:
    return IssuerConfig(
        issuer=settings.issuer,
        algorithms=tuple(settings.algorithms),
        hs_secret=settings.hs_secret.get_secret_value() if settings.hs_secret else None,
        public_key_pem=settings.public_key_pem,
        jwks_url=settings.jwks_url,
        audiences=tuple(settings.audiences),
        leeway_s=settings.leeway_s,
        claims=ClaimNames(**settings.claims),
        default_tenant=settings.default_tenant,
        default_models=None
        if settings.default_models is None
        else frozenset(settings.default_models),
        tenant_defaults={name: limits(value) for name, value in settings.tenant_defaults.items()},
    )


class AuthService:
    """Owns the key store, its cache and the JWKS client for one gateway process."""

    def __init__(self, settings: AuthSettings, pepper: bytes) -> None:
        self._settings = settings
        self._pepper = pepper
        # Built here so that bad issuer settings stop the gateway at start.
        self._issuers = [issuer_config(issuer) for issuer in settings.jwt_issuers]
        self._store: KeyStore | None = None
        self._audit: AuditLog | None = None
        self._cache: KeyCache | None = None
        self._http: httpx.AsyncClient | None = None
        self._authenticator: Authenticator | None = None
        self._verifier: JWTVerifier | None = None

    async def open(self) -> None:
        self._store = await open_key_store(self._settings.key_store)
        self._audit = await open_audit_log(self._settings.key_store)
        self._cache = KeyCache(self._store)
        self._cache.start()
        verifier = None
        if self._issuers:
            self._http = httpx.AsyncClient(timeout=JWKS_TIMEOUT_S)
            verifier = JWTVerifier(self._issuers, self._http)
        self._authenticator = Authenticator(self._cache, self._pepper, verifier)
        self._verifier = verifier

    async def close(self) -> None:
        if self._cache is not None:
            await self._cache.stop()
        if self._http is not None:
            await self._http.aclose()
        if self._store is not None:
            await self._store.close()
        if self._audit is not None:
            await self._audit.close()

    @property
    def store(self) -> KeyStore:
        if self._store is None:
            raise RuntimeError("the key store is used outside the lifespan")
        return self._store

    @property
    def audit(self) -> AuditLog:
        if self._audit is None:
            raise RuntimeError("the audit log is used outside the lifespan")
        return self._audit

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
        return await self._authenticator.authenticate(header)
