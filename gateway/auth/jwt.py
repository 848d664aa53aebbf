"""JWT bearer tokens, verified against configured issuers and mapped to a `Principal`.

    AuthError                 401; `reason` is a short machine string for metrics
    ├── InvalidToken              malformed, bad signature, algorithm, claims, iss or aud
    ├── ExpiredToken              `exp` has passed (beyond the leeway)
    ├── NotYetValid               `nbf` or `iat` is in the future (beyond the leeway)
    ├── UnknownIssuer             `iss` names no configured issuer
    └── UnknownKey                `kid` not in the issuer's JWKS, even after a refresh

Messages are safe to show a client: they never echo the token or its contents.
The issuer is chosen from the unverified `iss` claim; everything after that
uses only that issuer's algorithms and key, so a token cannot pick its own.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
import jwt

from gateway.auth.errors import AuthError
from gateway.auth.jwks import JWKSCache, JWKSUnavailable, KeyNotFound
from gateway.auth.jwt_config import (
    ClaimNames,
    IssuerConfig,
    PublicKey,
    key_fits,
    load_public_key,
)
from gateway.principal import Limits, Principal

# Compact JWS only: three non-empty base64url segments (an unsigned token has an empty third).
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
MAX_TOKEN_CHARS = 16_384


class InvalidToken(AuthError):
    default_reason = "malformed"


class ExpiredToken(AuthError):
    default_reason = "expired"


class NotYetValid(AuthError):
    default_reason = "not_yet_valid"


class UnknownIssuer(AuthError):
    default_reason = "unknown_issuer"


class UnknownKey(AuthError):
    default_reason = "unknown_kid"


@contextmanager
def map_jwt_errors() -> Iterator[None]:
    """Translate PyJWT's errors into ours, with fixed messages (theirs may quote the token)."""
    try:
        yield
    except jwt.InvalidSignatureError as exc:
        raise InvalidToken("token signature is invalid", reason="bad_signature") from exc
    except jwt.InvalidAlgorithmError as exc:
        raise InvalidToken("token algorithm is not allowed", reason="bad_algorithm") from exc
    except jwt.InvalidAudienceError as exc:
        raise InvalidToken("token audience is not accepted", reason="wrong_audience") from exc
    except jwt.InvalidIssuerError as exc:
        raise InvalidToken("token issuer is not accepted", reason="wrong_issuer") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidToken(f"token lacks the {exc.claim!r} claim", reason="missing_claim") from exc
    except jwt.InvalidKeyError as exc:
        raise InvalidToken("token key is not acceptable", reason="bad_key") from exc
    except jwt.PyJWTError as exc:
        raise InvalidToken("token is malformed", reason="malformed") from exc


class JWTVerifier:
    """Verifies bearer JWTs from a fixed set of issuers.

    PEM keys are parsed once here; JWKS issuers each get a cache that fetches
    through HTTP, the caller's client (opened and closed by the app lifespan).
    CLOCK is wall-clock seconds, for `exp`/`nbf`/`iat` and the JWKS timers.
    """

    def __init__(
        self,
        issuers: Sequence[IssuerConfig],
        http: httpx.AsyncClient,
        clock: Callable[[], float] = time.time,
        max_token_chars: int = MAX_TOKEN_CHARS,
    ) -> None:
        self._issuers: dict[str, IssuerConfig] = {}
        self._pem_keys: dict[str, PublicKey] = {}
        self._jwks: dict[str, JWKSCache] = {}
        self._clock = clock
        self._max_token_chars = max_token_chars
        for issuer in issuers:
            if issuer.issuer in self._issuers:
                raise ValueError(f"issuer {issuer.issuer!r} is configured twice")
            self._issuers[issuer.issuer] = issuer
            if issuer.public_key_pem:
                self._pem_keys[issuer.issuer] = load_public_key(
                    issuer.public_key_pem, issuer.algorithms
                )
            if issuer.jwks_url:
                self._jwks[issuer.issuer] = JWKSCache(issuer.jwks_url, http, issuer.jwks, clock)

    async def verify(self, token: str) -> Principal:
        """The principal TOKEN stands for; raises an AuthError for any bad token."""
        claims, issuer = await self.verified_claims(token)
        return principal_from_claims(claims, issuer)

    async def verified_claims(self, token: str) -> tuple[Mapping[str, Any], IssuerConfig]:
        """The claims of a token that passed every check, and the issuer that vouched."""
        header, unverified = self._peek(token)
        iss = unverified.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise UnknownIssuer("token issuer is not trusted here")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            raise InvalidToken("token algorithm is not allowed", reason="bad_algorithm")
        key = await self._key_for(issuer, header, alg)
        claims = _decode(token, key, issuer)
        self._check_times(claims, issuer.leeway_s)
        return claims, issuer

    def _peek(self, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        if (
            not isinstance(token, str)
            or len(token) > self._max_token_chars
            or not _COMPACT_JWS.fullmatch(token)
        ):
            raise InvalidToken("token is not a compact JWS", reason="malformed")
        with map_jwt_errors():
            parts = jwt.decode_complete(token, options={"verify_signature": False})
        return parts["header"], parts["payload"]

    async def _key_for(self, issuer: IssuerConfig, header: Mapping[str, Any], alg: str) -> Any:
        if issuer.hs_secret:
            return issuer.hs_secret.encode()
        cache = self._jwks.get(issuer.issuer)
        if cache is None:
            key: Any = self._pem_keys[issuer.issuer]
        else:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise InvalidToken("token header lacks a 'kid'", reason="missing_kid")
            try:
                jwk = await cache.get(kid)
            except KeyNotFound as exc:
                raise UnknownKey("token key id is not known to its issuer") from exc
            except JWKSUnavailable as exc:
                raise UnknownKey("issuer keys are unavailable", reason="jwks_unavailable") from exc
            if jwk.algorithm is not None and jwk.algorithm != alg:
                raise InvalidToken("token algorithm does not match its key", reason="bad_algorithm")
            key = jwk.key
        if not key_fits(alg, key):
            raise InvalidToken("token algorithm does not match its key", reason="bad_algorithm")
        return key

    def _check_times(self, claims: Mapping[str, Any], leeway: float) -> None:
        now = self._clock()
        exp = _number(claims, "exp")
        if exp is None or now >= exp + leeway:
            raise ExpiredToken("token has expired")
        nbf = _number(claims, "nbf")
        if nbf is not None and now < nbf - leeway:
            raise NotYetValid("token is not valid yet")
        iat = _number(claims, "iat")
        if iat is not None and now < iat - leeway:
            raise NotYetValid("token was issued in the future")


def _decode(token: str, key: Any, issuer: IssuerConfig) -> dict[str, Any]:
    """Check the signature, `iss` and `aud` with PyJWT, using only ISSUER's algorithms."""
    with map_jwt_errors():
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=list(issuer.algorithms),
            issuer=issuer.issuer,
            audience=list(issuer.audiences) or None,
            options={
                "require": ["exp", "iss"],
                "verify_aud": bool(issuer.audiences),
                # Times are checked against the verifier's clock instead.
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "enforce_minimum_key_length": True,
            },
        )
    return claims


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidToken(f"token claim {name!r} is not a number", reason="bad_claims")
    return float(value)


def principal_from_claims(claims: Mapping[str, Any], issuer: IssuerConfig) -> Principal:
    """Map verified claims to a Principal; absent claims fall back to the issuer's defaults."""
    names = issuer.claims
    subject = claims.get(names.subject)
    if not isinstance(subject, str) or not subject:
        raise InvalidToken(f"token claim {names.subject!r} must be a string", reason="bad_claims")
    tenant = claims.get(names.tenant)
    if tenant is None:
        tenant = issuer.default_tenant
    elif not isinstance(tenant, str) or not tenant:
        raise InvalidToken(f"token claim {names.tenant!r} must be a string", reason="bad_claims")
    return Principal(
        id=subject,
        tenant=tenant,
        kind="jwt",
        models=_models(claims, names, issuer.default_models),
        limits=_limits(claims, names, issuer.tenant_defaults.get(tenant, Limits())),
    )


def _models(
    claims: Mapping[str, Any], names: ClaimNames, default: frozenset[str] | None
) -> frozenset[str] | None:
    value = claims.get(names.models)
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(m, str) and m for m in value):
        raise InvalidToken(
            f"token claim {names.models!r} must be a list of strings", reason="bad_claims"
        )
    return frozenset(value)


def _limits(claims: Mapping[str, Any], names: ClaimNames, base: Limits) -> Limits:
    def pick(claim: str, fallback: int | None) -> int | None:
        value = claims.get(claim)
        if value is None:
            return fallback
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidToken(
                f"token claim {claim!r} must be a non-negative integer", reason="bad_claims"
            )
        return value

    return Limits(
        requests_per_minute=pick(names.requests_per_minute, base.requests_per_minute),
        tokens_per_minute=pick(names.tokens_per_minute, base.tokens_per_minute),
        concurrent_requests=pick(names.concurrent_requests, base.concurrent_requests),
        max_tokens=pick(names.max_tokens, base.max_tokens),
        max_batch=base.max_batch,
    )
