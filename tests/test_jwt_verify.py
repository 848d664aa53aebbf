"""JWT verification: the accepted algorithm families, and every kind of token refused.

Keys, tokens and the JWKS server are in tests/jwt_tokens.py.
"""

from __future__ import annotations

import json
import random

import pytest

from gateway.auth.jwt import (
    AuthError,
    ExpiredToken,
    InvalidToken,
    JWTVerifier,
    NotYetValid,
    UnknownIssuer,
)
from gateway.auth.jwt_config import IssuerConfig
from gateway.principal import Principal
from tests.jwt_tokens import (
    ASYMMETRIC,
    ISS,
    NOW,
    SECRET,
    Clock,
    JWKSServer,
    Keys,
    b64,
    claims,
    hs_issuer,
    jwk,
    jwks_issuer,
    mint,
    pem,
    raw_token,
    refused,
    verify,
    with_verifier,
)

# Accepted algorithm families ------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_tokens_are_accepted(alg: str) -> None:
    principal = verify([hs_issuer(alg)], mint(SECRET, alg))
    assert principal == Principal(id="alice", tenant="default", kind="jwt")


@pytest.mark.parametrize("alg", ASYMMETRIC)
def test_pem_key_tokens_are_accepted(keys: Keys, alg: str) -> None:
    key = keys.for_alg(alg)
    issuer = IssuerConfig(issuer=ISS, algorithms=(alg,), public_key_pem=pem(key))
    assert verify([issuer], mint(key, alg)).id == "alice"


def test_jwks_tokens_of_every_family_are_accepted(keys: Keys, jwks_server: JWKSServer) -> None:
    jwks_server.keys = [jwk(keys.rsa1, "r"), jwk(keys.p256, "e"), jwk(keys.ed, "d")]
    kids = {"RS": "r", "PS": "r", "ES": "e", "Ed": "d"}
    tokens = [mint(keys.for_alg(alg), alg, kid=kids[alg[:2]]) for alg in ASYMMETRIC]

    async def body(verifier: JWTVerifier) -> list[Principal]:
        return [await verifier.verify(token) for token in tokens]

    principals = with_verifier([jwks_issuer(jwks_server.url)], body)
    assert [p.id for p in principals] == ["alice"] * len(ASYMMETRIC)
    assert jwks_server.hits == 1


# Refusals ---------------------------------------------------------------------------------


def test_expiry_and_not_before_respect_the_leeway() -> None:
    issuer = [hs_issuer(leeway_s=30)]
    assert verify(issuer, mint(SECRET, "HS256", exp=NOW - 29)).id == "alice"
    refused(issuer, mint(SECRET, "HS256", exp=NOW - 30), ExpiredToken, "expired")
    assert verify(issuer, mint(SECRET, "HS256", nbf=NOW + 29)).id == "alice"
    refused(issuer, mint(SECRET, "HS256", nbf=NOW + 31), NotYetValid, "not_yet_valid")
    refused(issuer, mint(SECRET, "HS256", iat=NOW + 31), NotYetValid)
    strict = [hs_issuer(leeway_s=0)]
    refused(strict, mint(SECRET, "HS256", exp=NOW), ExpiredToken)
    refused(strict, mint(SECRET, "HS256", nbf=NOW + 1), NotYetValid)
    refused(strict, mint(SECRET, "HS256", exp=None), InvalidToken, "missing_claim")


def test_expiry_follows_the_injected_clock() -> None:
    token = mint(SECRET, "HS256", exp=NOW + 60)
    assert verify([hs_issuer(leeway_s=0)], token, Clock(NOW + 59)).id == "alice"
    refused([hs_issuer(leeway_s=0)], token, ExpiredToken, clock=Clock(NOW + 60))


def test_issuer_and_audience_checks() -> None:
    refused([hs_issuer()], mint(SECRET, "HS256", iss="https://evil.test"), UnknownIssuer)
    refused(
        [hs_issuer()],
        raw_token({"alg": "HS256"}, claims(iss=["x"]), SECRET.encode()),
        UnknownIssuer,
    )
    refused([hs_issuer()], mint(SECRET, "HS256", iss=None), UnknownIssuer)
    aud = [hs_issuer(audiences=("gateway", "api"))]
    assert verify(aud, mint(SECRET, "HS256", aud="api")).id == "alice"
    assert verify(aud, mint(SECRET, "HS256", aud=["other", "gateway"])).id == "alice"
    refused(aud, mint(SECRET, "HS256", aud="other"), InvalidToken, "wrong_audience")
    refused(aud, mint(SECRET, "HS256"), InvalidToken, "missing_claim")
    # No audiences configured: `aud` is not checked.
    assert verify([hs_issuer()], mint(SECRET, "HS256", aud="anything")).id == "alice"


def test_alg_none_is_refused(keys: Keys) -> None:
    issuers = [
        hs_issuer(),
        IssuerConfig(issuer="rs", algorithms=("RS256",), public_key_pem=pem(keys.rsa1)),
    ]
    for iss in (ISS, "rs"):
        for alg in ("none", "None", "NONE"):
            refused(issuers, raw_token({"alg": alg}, claims(iss=iss), sig=b""), InvalidToken)
            refused(
                issuers, raw_token({"alg": alg}, claims(iss=iss)), InvalidToken, "bad_algorithm"
            )
    with pytest.raises(ValueError, match="'none' is never accepted"):
        IssuerConfig(issuer=ISS, algorithms=("none",), hs_secret=SECRET)


def test_hs_token_signed_with_the_rsa_public_key_is_refused(
    keys: Keys, jwks_server: JWKSServer
) -> None:
    public_pem = pem(keys.rsa1).encode()
    jwks_server.keys = [jwk(keys.rsa1, "r")]
    pem_issuer = IssuerConfig(issuer=ISS, algorithms=("RS256",), public_key_pem=public_pem.decode())
    forged = raw_token({"alg": "HS256", "kid": "r"}, claims(), secret=public_pem)
    refused([pem_issuer], forged, InvalidToken, "bad_algorithm")
    refused([jwks_issuer(jwks_server.url)], forged, InvalidToken, "bad_algorithm")
    with pytest.raises(ValueError, match="cannot be mixed"):
        IssuerConfig(issuer=ISS, algorithms=("RS256", "HS256"), public_key_pem=public_pem.decode())


def test_tampered_tokens_are_refused(keys: Keys) -> None:
    issuer = IssuerConfig(issuer=ISS, algorithms=("RS256", "PS256"), public_key_pem=pem(keys.rsa1))
    header, _, signature = mint(keys.rsa1, "RS256").split(".")
    evil_payload = b64(json.dumps(claims(sub="admin")).encode())
    refused([issuer], f"{header}.{evil_payload}.{signature}", InvalidToken, "bad_signature")
    ps_header = b64(json.dumps({"alg": "PS256", "typ": "JWT"}).encode())
    _, payload, _ = mint(keys.rsa1, "RS256").split(".")
    refused([issuer], f"{ps_header}.{payload}.{signature}", InvalidToken, "bad_signature")
    refused([issuer], mint(keys.rsa2, "RS256"), InvalidToken, "bad_signature")
    refused([hs_issuer()], mint("y" * 64, "HS256"), InvalidToken, "bad_signature")


def test_a_key_of_the_wrong_type_or_binding_is_refused(keys: Keys, jwks_server: JWKSServer) -> None:
    jwks_server.keys = [jwk(keys.rsa1, "bound", alg="RS256"), jwk(keys.p256, "ec")]
    issuer = [jwks_issuer(jwks_server.url)]
    refused(issuer, mint(keys.rsa1, "PS256", kid="bound"), InvalidToken, "bad_algorithm")
    refused(issuer, mint(keys.ed, "EdDSA", kid="ec"), InvalidToken, "bad_algorithm")
    refused(issuer, mint(keys.rsa1, "RS256"), InvalidToken, "missing_kid")


MALFORMED = [
    "",
    "garbage",
    "a" * 10_240,
    "ééé.ééé.ééé",
    "Bearer abc.def.ghi",
    "abc.def",
    "abc.def.ghi.jkl",
    "abc.def.ghi.jkl.mno",
    "a.b.c",
    f"{b64(b'not json')}.{b64(b'{}')}.c2ln",
    f"{b64(b'[1]')}.{b64(b'{}')}.c2ln",
    raw_token({"alg": "HS256"}, [1, 2], secret=SECRET.encode()),
    raw_token({"alg": "HS256"}, "string", secret=SECRET.encode()),
    raw_token({"alg": "HS256", "kid": 5}, claims(), secret=SECRET.encode()),
    raw_token({"alg": "HS256", "crit": ["exp-ext"], "exp-ext": 1}, claims(), SECRET.encode()),
    raw_token({"alg": ["HS256"]}, claims(), secret=SECRET.encode()),
    raw_token({"alg": "HS256"}, claims(), secret=SECRET.encode()) + "=",
]


@pytest.mark.parametrize("token", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_tokens_raise_invalid_token(token: str) -> None:
    refused([hs_issuer()], token, InvalidToken)


def test_an_oversized_token_is_refused_before_parsing() -> None:
    token = mint(SECRET, "HS256", padding="p" * 20_000)
    refused([hs_issuer()], token, InvalidToken, "malformed")


def test_mutated_tokens_never_raise_anything_but_auth_errors(keys: Keys) -> None:
    token = mint(keys.p256, "ES256", tenant="acme")
    issuer = IssuerConfig(issuer=ISS, algorithms=("ES256",), public_key_pem=pem(keys.p256))
    rng = random.Random(7)
    alphabet = "AZaz09-_.=é \x00"

    async def body(verifier: JWTVerifier) -> int:
        refusals = 0
        for _ in range(400):
            chars = list(token)
            for _ in range(rng.randint(1, 4)):
                chars[rng.randrange(len(chars))] = rng.choice(alphabet)
            try:
                assert (await verifier.verify("".join(chars))).tenant == "acme"
            except AuthError:
                refusals += 1
        return refusals

    assert with_verifier([issuer], body) > 350
