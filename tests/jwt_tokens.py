"""Tokens, keys and verifiers for the JWT tests: keys minted once per session, a JWKS
served by a real local HTTP server, and a verifier run on its own event loop.

Registered as a plugin in tests/conftest.py: the RSA keys are generated once for all the
test_jwt_* modules.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import ssl
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.auth.errors import AuthError
from gateway.auth.jwt import JWTVerifier
from gateway.auth.jwt_config import IssuerConfig, JWKSPolicy
from gateway.principal import Principal
from tests.in_process import run_server

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
    """What one test's JWKS endpoint answers, changed by the test between fetches; counts GETs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.keys: list[dict[str, Any]] = []
        self.status = 200
        self.body: bytes | None = None  # overrides the JSON document when set
        self.delay_s = 0.0
        self.hits = 0


class JWKSApp:
    """An ASGI app answering every GET with the current test's JWKSServer, whatever the path.

    One is served for the whole session (tests/in_process.py), each test getting a fresh
    JWKSServer: starting and stopping a server per test would cost a fifth of a second each.
    A request still in flight from an earlier test counts against that test's object only.
    """

    PATH = "/.well-known/jwks.json"

    def __init__(self) -> None:
        self.serving = JWKSServer("")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http", scope["type"]
        serving = self.serving
        serving.hits += 1  # only the server's one event loop writes it
        await asyncio.sleep(serving.delay_s)
        body = serving.body or json.dumps({"keys": serving.keys}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": serving.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="session")
def jwks_app() -> Iterator[JWKSApp]:
    app = JWKSApp()
    with run_server(app) as url:
        app.serving.url = url + JWKSApp.PATH
        yield app


@pytest.fixture
def jwks_server(jwks_app: JWKSApp) -> JWKSServer:
    """A JWKS served over real HTTP on loopback, empty and unvisited at the test's start."""
    jwks_app.serving = JWKSServer(jwks_app.serving.url)
    return jwks_app.serving


@dataclass(frozen=True)
class Keys:
    rsa1: rsa.RSAPrivateKey
    rsa2: rsa.RSAPrivateKey
    p256: ec.EllipticCurvePrivateKey
    ed: ed25519.Ed25519PrivateKey

    def for_alg(self, alg: str) -> PrivateKey:
        by_prefix: dict[str, PrivateKey] = {"ES": self.p256, "RS": self.rsa1, "PS": self.rsa1}
        return by_prefix.get(alg[:2], self.ed)


@pytest.fixture(scope="session")
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
