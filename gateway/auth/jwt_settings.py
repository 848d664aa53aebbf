"""Settings -> JWT issuer configs (imported only when issuers are configured)."""

from __future__ import annotations

from gateway.auth.jwt_config import ClaimNames, IssuerConfig, JWKSPolicy
from gateway.principal import Limits
from gateway.settings import JWTIssuerSettings, LimitsSettings


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
        jwks=JWKSPolicy(
            ttl_s=settings.jwks_ttl_s, min_refresh_interval_s=settings.jwks_min_refresh_interval_s
        ),
    )
