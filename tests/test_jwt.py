"""JWT verification against freshly minted keys and a JWKS served by a real local HTTP server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.auth.jwt import (
    AuthError,
    ExpiredToken,
    InvalidToken,
    JWTVerifier,
    NotYetValid,
    UnknownIssuer,
    UnknownKey,
)
from gateway.auth.jwt_config import ClaimNames, IssuerConfig, JWKSPolicy
from gateway.auth.jwt_settings import issuer_config
from gateway.principal import Limits, Principal
from gateway.settings import JWTIssuerSettings
from tests.servers import TEST_PEPPER, Process, free_port, gateway_config, run_gateway

ISS = "https://idp.test"
SECRET = "x" * 64
NOW = 1_700_000_000.0
ASYMMETRIC = ("RS256", "PS256", "RS512", "ES256", "EdDSA")
T = TypeVar("T")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class JWKSServer:
    """A real HTTP server on loopback serving one JWKS document; counts its GETs."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.status = 200
        self.body: bytes | None = None  # overrides the JSON document when set
        self.delay_s = 0.0
        self.hits = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.hits += 1
                time.sleep(server.delay_s)
                body = server.body or json.dumps({"keys": server.keys}).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"


@pytest.fixture
def jwks_server() -> Iterator[JWKSServer]:
    server = JWKSServer()
    thread = threading.Thread(target=server.httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()
    thread.join(timeout=5)


@dataclass(frozen=True)
class Keys:
    rsa1: rsa.RSAPrivateKey
    rsa2: rsa.RSAPrivateKey
    p256: ec.EllipticCurvePrivateKey
    ed: ed25519.Ed25519PrivateKey

    def for_alg(self, alg: str) -> PrivateKey:
        by_prefix: dict[str, PrivateKey] = {"ES": self.p256, "RS": self.rsa1, "PS": self.rsa1}
        return by_prefix.get(alg[:2], self.ed)


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        rsa1=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa2=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        p256=ec.generate_private_key(ec.SECP256R1()),
        ed=ed25519.Ed25519PrivateKey.generate(),
    )


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": ISS, "sub": "alice", "exp": NOW + 3600, "iat": NOW}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def mint(key: Any, alg: str, kid: str | None = None, **overrides: Any) -> str:
    return jwt.encode(
        claims(**overrides), key, algorithm=alg, headers={"kid": kid} if kid else None
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: Any, payload: Any, secret: bytes | None = None, sig: bytes = b"sig") -> str:
    """A token built by hand, HMAC-SHA256-signed with SECRET if given."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if secret is not None:
        sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


def pem(key: PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def jwk(key: PrivateKey, kid: str, alg: str | None = None) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        data = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        data = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        data = OKPAlgorithm.to_jwk(public, as_dict=True)
    assert isinstance(data, dict)
    return {**data, "kid": kid, "use": "sig", **({"alg": alg} if alg else {})}


def hs_issuer(*algs: str, **kwargs: Any) -> IssuerConfig:
    return IssuerConfig(issuer=ISS, algorithms=algs or ("HS256",), hs_secret=SECRET, **kwargs)


def jwks_issuer(url: str, **kwargs: Any) -> IssuerConfig:
    kwargs.setdefault("jwks", JWKSPolicy(ttl_s=300, min_refresh_interval_s=30))
    return IssuerConfig(issuer=ISS, algorithms=ASYMMETRIC, jwks_url=url, **kwargs)


@cache
def tls_context() -> ssl.SSLContext:
    # Built once: loading the CA bundle for every client would dominate the run time.
    return ssl.create_default_context()


def with_verifier(
    issuers: Sequence[IssuerConfig],
    body: Callable[[JWTVerifier], Awaitable[T]],
    clock: Clock | None = None,
) -> T:
    async def main() -> T:
        async with httpx.AsyncClient(trust_env=False, verify=tls_context()) as http:
            return await body(JWTVerifier(issuers, http, clock or Clock()))

    return asyncio.run(main())


def verify(issuers: Sequence[IssuerConfig], token: str, clock: Clock | None = None) -> Principal:
    return with_verifier(issuers, lambda verifier: verifier.verify(token), clock)


def refused(
    issuers: Sequence[IssuerConfig],
    token: str,
    error: type[AuthError] = AuthError,
    reason: str | None = None,
    clock: Clock | None = None,
) -> AuthError:
    with pytest.raises(error) as info:
        verify(issuers, token, clock)
    assert info.value.status == 401
    assert reason is None or info.value.reason == reason, info.value.reason
    if len(token) > 8:
        assert token not in str(info.value) and token.encode() not in info.value.body()
    return info.value


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


# Claims -> Principal ----------------------------------------------------------------------


def test_claims_map_to_the_principal() -> None:
    token = mint(
        SECRET,
        "HS256",
        tenant="acme",
        models=["m1", "m2"],
        rpm=10,
        tpm=1000,
        concurrency=2,
        max_tokens=512,
    )
    assert verify([hs_issuer()], token) == Principal(
        id="alice",
        tenant="acme",
        kind="jwt",
        models=frozenset({"m1", "m2"}),
        limits=Limits(10, 1000, 2, 512),
    )


def test_absent_claims_fall_back_to_the_issuer_defaults() -> None:
    issuer = hs_issuer(
        default_tenant="free",
        default_models=frozenset({"small"}),
        tenant_defaults={"free": Limits(5, 500), "acme": Limits(60, 6000, 4)},
    )
    assert verify([issuer], mint(SECRET, "HS256")) == Principal(
        id="alice", tenant="free", kind="jwt", models=frozenset({"small"}), limits=Limits(5, 500)
    )
    acme = verify([issuer], mint(SECRET, "HS256", tenant="acme", tpm=9000, models=[]))
    assert acme.limits == Limits(60, 9000, 4) and acme.models == frozenset()


def test_claim_names_are_configurable() -> None:
    names = ClaimNames(subject="email", tenant="org", models="allowed", requests_per_minute="q")
    token = mint(SECRET, "HS256", email="bob@x", org="o1", allowed=["m"], q=7, rpm=99)
    principal = verify([hs_issuer(claims=names)], token)
    assert (principal.id, principal.tenant, principal.models) == ("bob@x", "o1", frozenset({"m"}))
    assert principal.limits.requests_per_minute == 7


@pytest.mark.parametrize(
    "overrides",
    [
        {"sub": 5},
        {"sub": ""},
        {"sub": None},
        {"tenant": ["a"]},
        {"models": "m1"},
        {"models": [1]},
        {"rpm": True},
        {"rpm": -1},
        {"tpm": 1.5},
        {"exp": "tomorrow"},
        {"exp": float("nan")},
        {"nbf": "now"},
    ],
    ids=str,
)
def test_bad_claim_types_are_invalid_tokens(overrides: dict[str, Any]) -> None:
    refused([hs_issuer()], mint(SECRET, "HS256", **overrides), InvalidToken)


# Configuration ----------------------------------------------------------------------------


def test_issuer_config_is_validated(keys: Keys) -> None:
    rsa_pem, ec_pem = pem(keys.rsa1), pem(keys.p256)
    private_pem = keys.rsa1.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    bad: list[tuple[dict[str, Any], str]] = [
        ({"algorithms": ()}, "at least one"),
        ({"algorithms": ("HS256", "RS256"), "hs_secret": SECRET}, "cannot be mixed"),
        ({"algorithms": ("XS1",), "hs_secret": SECRET}, "unsupported"),
        ({"algorithms": ("HS256",)}, "exactly one"),
        (
            {"algorithms": ("RS256",), "public_key_pem": rsa_pem, "jwks_url": "https://x"},
            "exactly one",
        ),
        ({"algorithms": ("HS256",), "public_key_pem": rsa_pem}, "HS\\* algorithms only"),
        ({"algorithms": ("RS256",), "hs_secret": SECRET}, "HS\\* algorithms only"),
        ({"algorithms": ("HS512",), "hs_secret": "x" * 48}, "at least 64 bytes"),
        ({"algorithms": ("RS256",), "public_key_pem": ec_pem}, "does not fit"),
        ({"algorithms": ("RS256",), "public_key_pem": private_pem}, "not a PEM public key"),
        ({"algorithms": ("RS256",), "jwks_url": "file:///etc/passwd"}, "http"),
        ({"algorithms": ("HS256",), "hs_secret": SECRET, "leeway_s": -1}, "leeway"),
        ({"algorithms": ("HS256",), "hs_secret": SECRET, "audiences": ("",)}, "audiences"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            IssuerConfig(issuer=ISS, **kwargs)
    with pytest.raises(ValueError, match="must not be empty"):
        ClaimNames(tenant="")
    with pytest.raises(ValueError, match="positive"):
        JWKSPolicy(ttl_s=0)
    with pytest.raises(ValueError, match="configured twice"):
        verify([hs_issuer(), hs_issuer()], mint(SECRET, "HS256"))


def test_each_issuer_uses_only_its_own_key_and_algorithms(keys: Keys) -> None:
    rs = IssuerConfig(issuer="rs", algorithms=("RS256",), public_key_pem=pem(keys.rsa1))
    issuers = [hs_issuer(), rs]
    assert verify(issuers, mint(keys.rsa1, "RS256", iss="rs")).id == "alice"
    assert verify(issuers, mint(SECRET, "HS256")).id == "alice"
    refused(issuers, mint(SECRET, "HS256", iss="rs"), InvalidToken, "bad_algorithm")
    refused(issuers, mint(keys.rsa1, "RS256"), InvalidToken, "bad_algorithm")


def test_a_gateway_accepts_a_rotated_in_kid_within_its_refresh_interval(
    keys: Keys, jwks_server: JWKSServer, sim: Process, tmp_path: Path
) -> None:
    """A real gateway, a real JWKS server: a new `kid` costs at most the configured
    minimum interval, and a flood of made-up `kid`s at most one fetch per interval."""
    interval = 1.0
    issuer = {
        "issuer": ISS,
        "algorithms": ["RS256"],
        "jwks_url": jwks_server.url,
        "jwks_min_refresh_interval_s": interval,
    }
    config = gateway_config(free_port(), {"sim-model": [sim.url]})
    config["auth"] = {
        "pepper": TEST_PEPPER,
        "key_store": {"sqlite_path": str(tmp_path / "keys.db")},
        "jwt_issuers": [issuer],
    }
    jwks_server.keys = [jwk(keys.rsa1, "k1")]
    now = time.time()

    def status(key: PrivateKey, kid: str) -> int:
        token = mint(key, "RS256", kid=kid, exp=now + 3600, iat=now)
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.get(f"{gateway.url}/v1/models", headers=headers, timeout=10).status_code

    with run_gateway(tmp_path, config) as gateway:
        assert status(keys.rsa1, "k1") == 200
        jwks_server.keys = [jwk(keys.rsa1, "k1"), jwk(keys.rsa2, "k2")]  # the IdP rotates
        rotated_at = time.monotonic()
        while status(keys.rsa2, "k2") != 200:
            assert time.monotonic() - rotated_at < interval + 3.0, "the new kid is still refused"
            time.sleep(0.05)
        hits_before, flood_started, sent = jwks_server.hits, time.monotonic(), 0
        while time.monotonic() - flood_started < 3.0:
            assert status(keys.rsa2, f"made-up-{random.random()}") == 401
            sent += 1
        flood_s = time.monotonic() - flood_started
        fetches = jwks_server.hits - hits_before
    assert sent > 20
    assert fetches <= flood_s / interval + 1, (fetches, flood_s)


def test_jwks_refresh_settings_reach_the_cache_policy() -> None:
    settings = JWTIssuerSettings(
        issuer=ISS,
        algorithms=["RS256"],
        jwks_url="https://idp.test/jwks.json",
        jwks_ttl_s=120,
        jwks_min_refresh_interval_s=7,
    )
    assert issuer_config(settings).jwks == JWKSPolicy(ttl_s=120, min_refresh_interval_s=7)
    default = JWTIssuerSettings(issuer=ISS, algorithms=["RS256"], jwks_url="https://idp.test/j")
    assert 2 <= issuer_config(default).jwks.min_refresh_interval_s <= 5
