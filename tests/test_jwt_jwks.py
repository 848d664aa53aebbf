"""JWKS keys fetched from a real local HTTP server: rotation, refresh rate limit, TTL, failures.

Keys, tokens and the JWKS server are in tests/jwt_tokens.py.
"""

from __future__ import annotations

import asyncio

import pytest
from jwt.algorithms import RSAAlgorithm

from gateway.auth.jwt import (
    JWTVerifier,
    UnknownKey,
)
from gateway.auth.jwt_config import JWKSPolicy
from tests.jwt_tokens import (
    SECRET,
    Clock,
    JWKSServer,
    Keys,
    b64,
    jwk,
    jwks_issuer,
    mint,
    refused,
    verify,
    with_verifier,
)

# JWKS: rotation, refresh rate limit, TTL, failures ----------------------------------------------


def test_key_rotation_is_picked_up_without_restart(keys: Keys, jwks_server: JWKSServer) -> None:
    jwks_server.keys = [jwk(keys.rsa1, "k1")]
    clock = Clock()

    async def body(verifier: JWTVerifier) -> None:
        assert (await verifier.verify(mint(keys.rsa1, "RS256", kid="k1"))).id == "alice"
        jwks_server.keys = [jwk(keys.rsa2, "k2")]
        clock.now += 31
        assert (await verifier.verify(mint(keys.rsa2, "RS256", kid="k2"))).id == "alice"
        assert jwks_server.hits == 2
        with pytest.raises(UnknownKey):
            await verifier.verify(mint(keys.rsa1, "RS256", kid="k1"))

    with_verifier([jwks_issuer(jwks_server.url)], body, clock)
    assert jwks_server.hits == 2


def test_unknown_kids_refresh_at_most_once_per_interval(
    keys: Keys, jwks_server: JWKSServer
) -> None:
    jwks_server.keys = [jwk(keys.rsa1, "k1")]
    clock = Clock()

    async def unknown(verifier: JWTVerifier, kid: str) -> str:
        with pytest.raises(UnknownKey) as info:
            await verifier.verify(mint(keys.rsa2, "RS256", kid=kid))
        return info.value.reason

    async def body(verifier: JWTVerifier) -> None:
        assert await unknown(verifier, "nope-1") == "unknown_kid"  # the first fetch
        clock.now += 31
        assert await unknown(verifier, "nope-2") == "unknown_kid"  # refreshes once
        clock.now += 10
        assert await unknown(verifier, "nope-3") == "unknown_kid"  # inside the interval
        assert jwks_server.hits == 2
        clock.now += 21
        await unknown(verifier, "nope-4")
        assert jwks_server.hits == 3

    with_verifier([jwks_issuer(jwks_server.url)], body, clock)


def test_concurrent_refreshes_coalesce_into_one_fetch(keys: Keys, jwks_server: JWKSServer) -> None:
    jwks_server.keys = [jwk(keys.rsa1, "k1")]
    jwks_server.delay_s = 0.2
    clock = Clock()
    good = mint(keys.rsa1, "RS256", kid="k1")

    async def body(verifier: JWTVerifier) -> None:
        results = await asyncio.gather(*(verifier.verify(good) for _ in range(10)))
        assert {p.id for p in results} == {"alice"} and jwks_server.hits == 1
        clock.now += 31
        tokens = [mint(keys.rsa1, "RS256", kid=f"new-{i}") for i in range(10)]
        outcomes = await asyncio.gather(
            *(verifier.verify(t) for t in tokens), return_exceptions=True
        )
        assert all(isinstance(o, UnknownKey) for o in outcomes)
        assert jwks_server.hits == 2

    with_verifier([jwks_issuer(jwks_server.url)], body, clock)


def test_keys_are_refetched_after_their_ttl(keys: Keys, jwks_server: JWKSServer) -> None:
    jwks_server.keys = [jwk(keys.ed, "d")]
    clock = Clock()
    token = mint(keys.ed, "EdDSA", kid="d")
    policy = JWKSPolicy(ttl_s=60, min_refresh_interval_s=5)

    async def body(verifier: JWTVerifier) -> None:
        await verifier.verify(token)
        clock.now += 59
        await verifier.verify(token)
        assert jwks_server.hits == 1
        clock.now += 2
        await verifier.verify(token)
        assert jwks_server.hits == 2

    with_verifier([jwks_issuer(jwks_server.url, jwks=policy)], body, clock)


@pytest.mark.parametrize("failure", ["status", "not_json", "no_keys", "too_large"])
def test_a_failed_fetch_keeps_the_old_keys(
    keys: Keys, jwks_server: JWKSServer, failure: str
) -> None:
    jwks_server.keys = [jwk(keys.rsa1, "k1")]
    clock = Clock()
    policy = JWKSPolicy(ttl_s=60, min_refresh_interval_s=5, max_bytes=10_000)

    async def body(verifier: JWTVerifier) -> None:
        await verifier.verify(mint(keys.rsa1, "RS256", kid="k1"))
        if failure == "status":
            jwks_server.status = 500
        else:
            jwks_server.body = {"not_json": b"<html>", "no_keys": b"{}"}.get(failure, b" " * 20_000)
        clock.now += 61
        assert (await verifier.verify(mint(keys.rsa1, "RS256", kid="k1"))).id == "alice"
        with pytest.raises(UnknownKey) as info:
            await verifier.verify(mint(keys.rsa1, "RS256", kid="k2"))
        assert info.value.reason == "jwks_unavailable"
        assert jwks_server.hits == 2  # the failed fetch counts against the refresh interval

    with_verifier([jwks_issuer(jwks_server.url, jwks=policy)], body, clock)


def test_an_unreachable_jwks_is_an_auth_error(keys: Keys) -> None:
    issuer = jwks_issuer("http://127.0.0.1:9/jwks.json", jwks=JWKSPolicy(timeout_s=1))
    refused([issuer], mint(keys.rsa1, "RS256", kid="k1"), UnknownKey, "jwks_unavailable")


def test_unusable_jwks_entries_are_skipped(keys: Keys, jwks_server: JWKSServer) -> None:
    private = RSAAlgorithm.to_jwk(keys.rsa1, as_dict=True)
    assert isinstance(private, dict)
    jwks_server.keys = [
        {"kty": "oct", "kid": "sym", "k": b64(SECRET.encode())},
        {**jwk(keys.rsa1, "enc"), "use": "enc"},
        {**private, "kid": "private"},
        {"kty": "RSA", "kid": "broken", "n": "AA", "e": "AQAB"},
        jwk(keys.rsa1, "good"),
    ]
    issuer = [jwks_issuer(jwks_server.url)]
    for kid in ("sym", "enc", "private", "broken"):
        refused(issuer, mint(keys.rsa1, "RS256", kid=kid), UnknownKey)
    assert verify(issuer, mint(keys.rsa1, "RS256", kid="good")).id == "alice"
