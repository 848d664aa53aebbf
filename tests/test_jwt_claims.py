"""JWT claims mapped to the principal, and the issuer configuration down to a running gateway.

Keys, tokens and the JWKS server are in tests/jwt_tokens.py.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.auth.jwt import (
    InvalidToken,
)
from gateway.auth.jwt_config import ClaimNames, IssuerConfig, JWKSPolicy
from gateway.auth.jwt_settings import issuer_config
from gateway.principal import Limits, Principal
from gateway.settings import JWTIssuerSettings
from tests.jwt_tokens import (
    ISS,
    SECRET,
    JWKSServer,
    Keys,
    PrivateKey,
    hs_issuer,
    jwk,
    mint,
    pem,
    refused,
    verify,
)
from tests.servers import TEST_PEPPER, Process, free_port, gateway_config, run_gateway

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


def test_zero_limits_in_claims_are_limits_of_zero() -> None:
    token = mint(SECRET, "HS256", rpm=0, tpm=0, concurrency=0, max_tokens=0)
    assert verify([hs_issuer()], token).limits == Limits(0, 0, 0, 0)


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
        # At least 3 s and at least 30 made-up kids, however slow a loaded machine is.
        while time.monotonic() - flood_started < 3.0 or sent < 30:
            assert status(keys.rsa2, f"made-up-{random.random()}") == 401
            sent += 1
        flood_s = time.monotonic() - flood_started
        fetches = jwks_server.hits - hits_before
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
