"""JWT verification: the accepted algorithm families, and every kind of token refused.

Keys, tokens and the JWKS server are in tests/jwt_tokens.py.
"""

from __future__ import annotations

import base64
import json
import random
import string

import jwt
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
    refused(issuer, mint(SECRET, "HS256", exp=NOW - 3600), ExpiredToken, "expired")
    assert verify(issuer, mint(SECRET, "HS256", nbf=NOW + 29)).id == "alice"
    refused(issuer, mint(SECRET, "HS256", nbf=NOW + 31), NotYetValid, "not_yet_valid")
    refused(issuer, mint(SECRET, "HS256", iat=NOW + 31), NotYetValid)
    assert verify(issuer, mint(SECRET, "HS256", nbf=NOW + 30, iat=NOW + 30)).id == "alice"
    strict = [hs_issuer(leeway_s=0)]
    refused(strict, mint(SECRET, "HS256", exp=NOW), ExpiredToken)
    refused(strict, mint(SECRET, "HS256", nbf=NOW + 1), NotYetValid)
    refused(strict, mint(SECRET, "HS256", exp=None), InvalidToken, "missing_claim")


def test_expiry_follows_the_injected_clock() -> None:
    token = mint(SECRET, "HS256", exp=NOW + 60)
    assert verify([hs_issuer(leeway_s=0)], token, Clock(NOW + 59)).id == "alice"
    refused([hs_issuer(leeway_s=0)], token, ExpiredToken, clock=Clock(NOW + 60))
    # Only the injected clock judges times, even one far ahead of the machine's.
    later = 4_000_000_000.0
    future = mint(SECRET, "HS256", nbf=later, iat=later, exp=later + 60)
    assert verify([hs_issuer(leeway_s=0)], future, Clock(later + 1)).id == "alice"


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
    no_kid = jwt.encode(claims(), keys.rsa1, algorithm="RS256", headers={"kid": ""})
    refused(issuer, no_kid, InvalidToken, "missing_kid")
    # A key's own `alg` binds it both ways, and is honoured when it matches.
    jwks_server.keys.append(jwk(keys.rsa1, "pss", alg="PS256"))
    refused(issuer, mint(keys.rsa1, "RS256", kid="pss"), InvalidToken, "bad_algorithm")
    assert verify(issuer, mint(keys.rsa1, "RS256", kid="bound")).id == "alice"


def test_an_algorithm_the_issuer_does_not_allow_is_refused_before_any_key_fetch(
    keys: Keys, jwks_server: JWKSServer
) -> None:
    jwks_server.keys = [jwk(keys.rsa1, "r")]
    issuer = IssuerConfig(issuer=ISS, algorithms=("RS256",), jwks_url=jwks_server.url)
    refused([issuer], mint(keys.p256, "ES256", kid="unknown"), InvalidToken, "bad_algorithm")
    assert jwks_server.hits == 0


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


def test_a_token_of_16_kib_is_accepted_and_one_character_more_refused() -> None:
    def of_length(chars: int) -> str:
        for pad in range(chars * 3 // 4 - 400, chars):
            token = mint(SECRET, "HS256", padding="p" * pad)
            if len(token) >= chars:
                return token
        raise AssertionError("unreachable")

    largest = of_length(16_384)
    assert len(largest) == 16_384, len(largest)
    assert verify([hs_issuer()], largest).id == "alice"
    over = of_length(16_385)
    assert len(over) == 16_385, len(over)
    refused([hs_issuer()], over, InvalidToken, "malformed")


B64URL = string.ascii_letters + string.digits + "-_"


def signed_parts(token: str) -> tuple[str, str, bytes] | None:
    """What verifying TOKEN depends on: the header and payload segments as sent (the
    signature covers their text, not what they decode to) and the signature's bytes;
    None for anything that is not three segments of unpadded base64url."""
    parts = token.split(".")
    if len(parts) != 3 or not all(part and set(part) <= set(B64URL) for part in parts):
        return None
    try:
        signature = base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
    except ValueError:  # binascii.Error: a length no base64 text has
        return None
    return parts[0], parts[1], signature


def canonical(token: str) -> bool:
    """Base64 leaves a few bits of the last character unused: the verifier refuses a
    signature spelled with any of them set, so no token has two valid spellings."""
    parts = signed_parts(token)
    return parts is not None and b64(parts[2]) == token.rsplit(".", 1)[1]


def mutations(token: str, rng: random.Random) -> list[str]:
    """The token itself, random corruptions of 1-4 characters, and every other last
    character of the signature (some decode to the same bytes, spelled otherwise)."""
    alphabet = "AZaz09-_.=é \x00"
    mutated = [token]
    for _ in range(400):
        chars = list(token)
        for _ in range(rng.randint(1, 4)):
            chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        mutated.append("".join(chars))
    return mutated + [token[:-1] + last for last in B64URL if last != token[-1]]


def test_mutated_tokens_never_raise_anything_but_auth_errors(keys: Keys) -> None:
    """Exact: a mutation verifies if and only if it leaves the signed text and the
    signature's bytes as they were, canonically spelled; any other exception than an
    AuthError fails the test."""
    token = mint(keys.p256, "ES256", tenant="acme")
    issuer = IssuerConfig(issuer=ISS, algorithms=("ES256",), public_key_pem=pem(keys.p256))
    candidates = mutations(token, random.Random(7))

    async def body(verifier: JWTVerifier) -> list[bool]:
        accepted = []
        for mutated in candidates:
            try:
                accepted.append((await verifier.verify(mutated)).tenant == "acme")
            except AuthError:
                accepted.append(False)
        return accepted

    outcomes = with_verifier([issuer], body)
    original = signed_parts(token)
    same = [signed_parts(mutated) == original for mutated in candidates]
    wrong = [
        (mutated, "accepted" if verified else "refused")
        for mutated, verified, same_bytes in zip(candidates, outcomes, same, strict=True)
        if verified != (same_bytes and canonical(mutated))
    ]
    assert not wrong, f"{len(wrong)} of {len(candidates)} mutations judged wrongly: {wrong[:3]}"
    # Every class was exercised: accepted, refused, and the same bytes spelled otherwise.
    assert outcomes[0] and not all(outcomes)
    assert any(s and not canonical(m) for m, s in zip(candidates, same, strict=True))
