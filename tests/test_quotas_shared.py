"""Quotas shared by three gateway processes through one real redis-server, and Redis outages."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from gateway.principal import Limits, Quotas
from tests.servers import (
    TEST_PEPPER,
    Process,
    RedisServer,
    create_key,
    free_port,
    gateway_config,
    metric,
    run_gateway,
)

ADMIN_TOKEN = "admin-token-for-shared-quotas-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PEPPER = "pepper-shared-quotas-by-three-gateways-0123"
MODEL = "sim-model"
PROMPT = [{"role": "user", "content": "Share the quota"}]
TENANT_REQUESTS = 10


@pytest.fixture(scope="module")
def gateways(module_tmp: Path, sim: Process, module_redis: RedisServer) -> Iterator[list[Process]]:
    with ExitStack() as stack:
        processes = []
        for _ in range(3):
            config = gateway_config(free_port(), {MODEL: [sim.url]})
            config["auth"] = {
                "pepper": PEPPER,
                "key_store": {"backend": "redis", "redis_url": module_redis.url},
            }
            config["admin"] = {"tokens": [ADMIN_TOKEN]}
            config["limits"] = {
                "backend": "redis",
                "tenants": {"team": {"quotas": {"requests_per_day": TENANT_REQUESTS}}},
            }
            processes.append(stack.enter_context(run_gateway(module_tmp, config)))
        yield processes


def new_key(gateway: Process, tenant: str = "acme", **quotas: object) -> tuple[str, str]:
    body = {"tenant": tenant, "name": "shared", "limits": {"quotas": quotas}}
    response = httpx.post(f"{gateway.url}/admin/v1/keys", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()["key"], response.json()["id"]


async def burst(gateways: list[Process], keys: list[str], count: int) -> list[httpx.Response]:
    """COUNT requests at once, spread over the gateways and keys."""
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(i: int) -> httpx.Response:
            gateway, key = gateways[i % len(gateways)], keys[i % len(keys)]
            body = {"model": MODEL, "messages": PROMPT, "max_tokens": 8}
            headers = {"Authorization": f"Bearer {key}"}
            return await client.post(
                f"{gateway.url}/v1/chat/completions", json=body, headers=headers
            )

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def key_quota(gateway: Process, key_id: str) -> dict[str, object]:
    response = httpx.get(f"{gateway.url}/admin/v1/keys/{key_id}/quota", headers=ADMIN)
    assert response.status_code == 200, response.text
    (state,) = response.json()["quotas"]
    assert isinstance(state, dict)
    return state


def test_a_burst_over_three_gateways_stays_within_the_quota(gateways: list[Process]) -> None:
    limit = 1500
    key, key_id = new_key(gateways[0], tokens_per_day=limit)
    answers = asyncio.run(burst(gateways, [key], 150))
    ok = [a for a in answers if a.status_code == 200]
    assert {a.status_code for a in answers} == {200, 429}
    charged = sum(a.json()["usage"]["total_tokens"] for a in ok)
    state = key_quota(gateways[1], key_id)
    assert state["reserved"] == 0
    report = f"charged {charged} of {limit}: overshoot {charged - limit}, {len(ok)} answered"
    # A burst overshoots by at most the usage above the reservations in flight; the
    # simulator never uses more than its reservation, so that is 0 here. Every replica
    # settled into the same counter.
    assert charged <= limit, report
    assert state["used"] == charged, report
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"]["type"] == "tokens_per_day_quota_exceeded"
    # Reservations (prompt estimate + max_tokens) are larger than the real usage, so the
    # burst left room once settled: spend it one request at a time, on every gateway.
    for i in range(200):
        (answer,) = asyncio.run(burst([gateways[i % 3]], [key], 1))
        if answer.status_code != 200:
            break
        charged += answer.json()["usage"]["total_tokens"]
    assert answer.status_code == 429
    needs = int(re.findall(r"this request needs (\d+)", answer.json()["error"]["message"])[0])
    report = f"charged {charged} of {limit}: overshoot {charged - limit}, refused needing {needs}"
    assert charged <= limit < charged + needs, report
    assert key_quota(gateways[2], key_id)["used"] == charged, report


def test_a_tenant_quota_holds_for_two_keys_over_three_gateways(gateways: list[Process]) -> None:
    keys = [new_key(gateways[1], tenant="team")[0] for _ in range(2)]
    answers = asyncio.run(burst(gateways, keys, 4 * TENANT_REQUESTS))
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == TENANT_REQUESTS
    assert statuses.count(429) == 3 * TENANT_REQUESTS
    response = httpx.get(f"{gateways[2].url}/admin/v1/tenants/team/quota", headers=ADMIN)
    (state,) = response.json()["quotas"]
    assert (state["used"], state["reserved"], state["remaining"]) == (TENANT_REQUESTS, 0, 0)


@pytest.mark.parametrize("policy", ["open", "closed"])
def test_redis_down_follows_the_backend_error_policy(
    tmp_path: Path, sim: Process, redis_server: RedisServer, policy: str
) -> None:
    config = gateway_config(free_port(), {MODEL: [sim.url]})
    config["auth"] = {"pepper": TEST_PEPPER, "key_store": {"sqlite_path": str(tmp_path / "k.db")}}
    config["admin"] = {"tokens": [ADMIN_TOKEN]}
    config["limits"] = {
        "backend": "redis",
        "redis_url": redis_server.url,
        "on_backend_error": policy,
    }
    key = create_key(config, limits=Limits(quotas=Quotas(tokens_per_day=10**6)))
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": MODEL, "messages": PROMPT, "max_tokens": 3}
    with run_gateway(tmp_path, config) as gateway:
        url = f"{gateway.url}/v1/chat/completions"
        first = httpx.post(url, json=body, headers=headers, timeout=30)
        assert first.status_code == 200
        assert "x-ratelimit-limit-tokens-day" in first.headers
        redis_server.stop()
        answer = httpx.post(url, json=body, headers=headers, timeout=30)
        labels = {"action": "quota_admit", "outcome": policy}
        assert metric(gateway.url, "gateway_limiter_backend_errors_total", **labels) >= 1
        if policy == "open":
            assert answer.status_code == 200
            assert "x-ratelimit-limit-tokens-day" not in answer.headers
        else:
            assert answer.status_code == 503
            assert answer.json()["error"]["code"] == "rate_limiter_unavailable"
            assert answer.headers["retry-after"] == "1"
        read = httpx.get(f"{gateway.url}/admin/v1/tenants/tests/quota", headers=ADMIN)
        assert read.status_code == 200  # the tenant has no quotas: nothing to ask Redis
        keys = httpx.get(f"{gateway.url}/admin/v1/keys", headers=ADMIN).json()["data"]
        read = httpx.get(f"{gateway.url}/admin/v1/keys/{keys[0]['id']}/quota", headers=ADMIN)
        assert read.status_code == 503
        assert read.json()["error"]["code"] == "quota_backend_unavailable"
