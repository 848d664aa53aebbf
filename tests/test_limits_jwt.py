"""JWT subjects are limited like keys: by their token's claims, and by their tenant's limits,
which they share with the tenant's API keys."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from tests.servers import Process, create_key, free_port, gateway_config, run_gateway

ISSUER = "https://idp.example.com"
HS_SECRET = "hs-secret-for-the-limit-tests-0123456789"
MODEL = "sim-model"


@pytest.fixture(scope="module")
def jwt_gateway(module_tmp: Path, sim: Process) -> Iterator[tuple[Process, str, str]]:
    config = gateway_config(free_port(), {MODEL: [sim.url]})
    config["auth"] = {
        "pepper": "pepper-for-the-jwt-limit-tests-0123456789",
        "key_store": {"sqlite_path": str(module_tmp / "jwt-keys.db")},
        "jwt_issuers": [
            {
                "issuer": ISSUER,
                "algorithms": ["HS256"],
                "hs_secret": HS_SECRET,
                "default_tenant": "idp-users",
            }
        ],
    }
    config["limits"] = {
        "tenants": {
            "shared": {"requests_per_minute": 3},
            "metered": {"quotas": {"requests_per_day": 2}},
        }
    }
    key = create_key(config, tenant="shared")
    metered = create_key(config, tenant="metered")
    with run_gateway(module_tmp, config) as gateway:
        yield gateway, key, metered


def token(subject: str, **claims: object) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "sub": subject, "exp": now + 300, **claims}
    return jwt.encode(payload, HS_SECRET, algorithm="HS256")


def status(gateway: Process, credential: str) -> httpx.Response:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
    headers = {"Authorization": f"Bearer {credential}"}
    return httpx.post(f"{gateway.url}/v1/completions", json=body, headers=headers, timeout=30)


def test_a_subjects_own_claims_limit_it(jwt_gateway: tuple[Process, str, str]) -> None:
    gateway, _, _ = jwt_gateway
    bob = token("bob", rpm=2)
    answers = [status(gateway, bob) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200, 200, 429]
    assert answers[0].headers["x-ratelimit-limit-requests"] == "2"
    assert "token subject" in answers[2].json()["error"]["message"]
    # Another subject has its own budget.
    assert status(gateway, token("carol", rpm=2)).status_code == 200


def test_a_tenant_is_shared_by_its_keys_and_subjects(jwt_gateway: tuple[Process, str, str]) -> None:
    gateway, key, _ = jwt_gateway
    subject = token("dave", tenant="shared")
    statuses = [status(gateway, credential).status_code for credential in (key, subject) * 3]
    assert statuses == [200, 200, 200, 429, 429, 429]


def test_a_subject_counts_against_its_tenants_quota(jwt_gateway: tuple[Process, str, str]) -> None:
    gateway, _, key = jwt_gateway
    subject = token("erin", tenant="metered")
    answers = [status(gateway, credential) for credential in (key, subject, subject, key)]
    assert [answer.status_code for answer in answers] == [200, 200, 429, 429]
    assert answers[1].headers["x-ratelimit-remaining-requests-day"] == "0"
    error = answers[2].json()["error"]
    assert error["type"] == "requests_per_day_quota_exceeded"
    assert "tenant" in error["message"]
