"""Tenants changed through the admin API apply on two gateways sharing one redis-server,
within a second and without a restart; settings-seeded tenants and their precedence."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import (
    Process,
    RedisServer,
    free_port,
    gateway_config,
    run_gateway,
    run_simulator,
)

ADMIN_TOKEN = "admin-token-for-shared-tenants-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PEPPER = "pepper-shared-tenants-by-two-gateways-0123"
MODEL, OTHER = "sim-model", "sim-other"
# The bound: a change reaches every replica within one second of the answer.
PROPAGATION_S = 1.0


@pytest.fixture(scope="module")
def gateways(module_tmp: Path, sim: Process, module_redis: RedisServer) -> Iterator[list[Process]]:
    with ExitStack() as stack:
        other = stack.enter_context(run_simulator(module_tmp, model=OTHER))
        processes = []
        for _ in range(2):
            config = gateway_config(free_port(), {MODEL: [sim.url], OTHER: [other.url]})
            config["auth"] = {
                "pepper": PEPPER,
                "key_store": {"backend": "redis", "redis_url": module_redis.url},
            }
            config["admin"] = {"tokens": [ADMIN_TOKEN]}
            config["limits"] = {
                "backend": "redis",
                "tenants": {"seeded": {"requests_per_minute": 1000, "allowed_models": [MODEL]}},
            }
            processes.append(stack.enter_context(run_gateway(module_tmp, config)))
        yield processes


def admin(gateway: Process, method: str, path: str, body: object = None) -> httpx.Response:
    url = f"{gateway.url}/admin/v1/{path}"
    return httpx.request(method, url, json=body, headers=ADMIN, timeout=10)


def new_key(gateway: Process, tenant: str) -> str:
    response = admin(gateway, "POST", "keys", {"tenant": tenant, "name": "t"})
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


def chat(gateway: Process, key: str, model: str = MODEL, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(
        f"{gateway.url}/v1/chat/completions", json=body | extra, headers=headers, timeout=30
    )


def seen_within(check: Callable[[], bool], deadline_s: float) -> float | None:
    """Seconds until CHECK held, polling; None if it did not within DEADLINE_S."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > deadline_s:
            return None
        time.sleep(0.02)


def test_allowed_models_and_limits_reach_both_gateways_within_a_second(
    gateways: list[Process],
) -> None:
    first, second = gateways
    created = admin(first, "POST", "tenants", {"name": "acme", "metadata": {"team": "ml"}})
    assert created.status_code == 201, created.text
    assert created.json()["source"] == "store" and created.json()["models"] is None
    key = new_key(first, "acme")
    assert seen_within(lambda: chat(second, key, OTHER).status_code == 200, 5) is not None

    patched = admin(first, "PATCH", "tenants/acme", {"models": [MODEL]})
    assert patched.status_code == 200, patched.text
    for gateway in (second, first):
        delay = seen_within(lambda g=gateway: chat(g, key, OTHER).status_code == 404, PROPAGATION_S)
        assert delay is not None, f"the allowlist did not reach {gateway.url} within 1 s"
        print(f"allowlist applied on {gateway.url} after {delay:.3f} s")
    refused = chat(second, key, OTHER)
    assert refused.json()["error"]["code"] == "model_not_found"
    assert chat(second, key, MODEL).status_code == 200
    models = httpx.get(f"{second.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert [m["id"] for m in models.json()["data"]] == [MODEL]

    # A rate of 0 admits nothing: the tenant's limits changed at run time apply too.
    admin(first, "PATCH", "tenants/acme", {"limits": {"requests_per_minute": 0}})
    delay = seen_within(lambda: chat(second, key).status_code == 429, PROPAGATION_S)
    assert delay is not None, "the tenant's rate did not reach the other gateway within 1 s"
    print(f"rate applied on the other gateway after {delay:.3f} s")
    admin(first, "PATCH", "tenants/acme", {"limits": {"requests_per_minute": None}})
    assert seen_within(lambda: chat(second, key).status_code == 200, PROPAGATION_S) is not None


def test_a_tenant_cap_on_max_tokens_applies_to_keys_without_one(gateways: list[Process]) -> None:
    first, second = gateways
    assert admin(first, "POST", "tenants", {"name": "capped"}).status_code == 201
    key = new_key(first, "capped")
    admin(first, "PATCH", "tenants/capped", {"limits": {"max_tokens": 2}})

    def capped() -> bool:
        answer = chat(second, key, max_tokens=50)
        return answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] <= 2

    assert seen_within(capped, PROPAGATION_S) is not None


def test_the_audit_log_holds_each_change_before_and_after(gateways: list[Process]) -> None:
    first, second = gateways
    assert admin(first, "POST", "tenants", {"name": "audited"}).status_code == 201
    body = {"limits": {"tokens_per_minute": 5000}, "metadata": {"owner": "ops"}}
    assert admin(second, "PATCH", "tenants/audited", body).status_code == 200
    entries = admin(first, "GET", "audit").json()["data"]
    update = next(e for e in entries if e["action"] == "tenant.update" and e["tenant"] == "audited")
    assert update["actor"] == "token:0"
    assert update["detail"]["fields"] == "limits,metadata"
    before, after = json.loads(update["detail"]["before"]), json.loads(update["detail"]["after"])
    assert before["limits"]["tokens_per_minute"] is None and before["metadata"] == {}
    assert after["limits"]["tokens_per_minute"] == 5000 and after["metadata"] == {"owner": "ops"}
    assert ADMIN_TOKEN not in json.dumps(entries)
    assert any(e["action"] == "tenant.create" and e["tenant"] == "audited" for e in entries)


def test_a_stored_tenant_wins_over_the_settings_and_deleting_it_restores_them(
    gateways: list[Process],
) -> None:
    first, second = gateways
    shown = admin(first, "GET", "tenants/seeded").json()
    assert shown["source"] == "settings" and shown["models"] == [MODEL]
    assert shown["limits"]["requests_per_minute"] == 1000 and shown["created_at"] is None
    key = new_key(first, "seeded")
    assert chat(second, key, OTHER).status_code == 404
    assert admin(first, "POST", "tenants", {"name": "seeded"}).status_code == 409
    assert admin(first, "DELETE", "tenants/seeded").status_code == 409

    patched = admin(first, "PATCH", "tenants/seeded", {"models": None})
    assert patched.json()["source"] == "store", patched.text
    assert patched.json()["limits"]["requests_per_minute"] == 1000  # copied from the settings
    assert seen_within(lambda: chat(second, key, OTHER).status_code == 200, PROPAGATION_S)
    listed = {t["name"]: t for t in admin(second, "GET", "tenants").json()["data"]}
    assert listed["seeded"]["source"] == "store"

    # The key is usable: the tenant cannot go while it has one.
    refused = admin(first, "DELETE", "tenants/seeded")
    assert refused.status_code == 409 and "revoke" in refused.json()["error"]["message"]
    for record in admin(first, "GET", "keys?tenant=seeded").json()["data"]:
        admin(first, "POST", f"keys/{record['id']}/revoke")
    assert admin(first, "DELETE", "tenants/seeded").status_code == 204
    assert admin(second, "GET", "tenants/seeded").json()["source"] == "settings"


def test_quotas_of_a_tenant_created_at_run_time_are_enforced(gateways: list[Process]) -> None:
    first, second = gateways
    body = {"name": "metered", "quotas": {"requests_per_day": 2}}
    assert admin(second, "POST", "tenants", body).status_code == 201
    key = new_key(first, "metered")

    def metered() -> bool:
        # Answers before the other gateway knew the tenant carry no quota and count none.
        return "x-ratelimit-limit-requests-day" in chat(first, key).headers

    assert seen_within(metered, PROPAGATION_S) is not None
    assert chat(second, key).status_code == 200
    refused = chat(first, key)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert refused.json()["error"]["type"] == "requests_per_day_quota_exceeded"
    quota = admin(second, "GET", "tenants/metered/quota").json()["quotas"]
    assert [(q["kind"], q["used"]) for q in quota] == [("requests", 2)]
    assert admin(second, "GET", "tenants/metered/usage").status_code == 200


HOSTILE_BODIES: list[Any] = [
    {"name": "x", "limits": {"requests_per_minute": "10"}},
    {"name": "x", "limits": {"requests_per_minute": True}},
    {"name": "x", "limits": {"tokens_per_minute": 1.5}},
    {"name": "x", "limits": {"max_tokens": 0}},
    {"name": "x", "limits": {"models": {MODEL: {"requests_per_minute": "1"}}}},
    {"name": "x", "quotas": {"requests_per_day": "5"}},
    {"name": "x", "quotas": {"bogus_per_day": 5}},
    {"name": "x", "models": "sim-model"},
    {"name": "x", "models": [1]},
    {"name": "x", "metadata": {"k": 1}},
    {"name": "x", "metadata": {f"k{i}": "v" for i in range(65)}},
    {"name": "x", "metadata": {"k": "v" * 1025}},
    {"name": "x", "metadata": {"k": "line\nbreak"}},
    {"name": "x", "extra": 1},
    {"name": 5},
    ["x"],
]
HOSTILE_NAMES = ["", "../keys", "a/b", "a b", "-dash", "x" * 65, "é", "a\u0000b", "%2e%2e", "."]


@pytest.mark.parametrize("body", HOSTILE_BODIES)
def test_wrong_types_and_oversized_bodies_are_422(gateways: list[Process], body: Any) -> None:
    response = admin(gateways[0], "POST", "tenants", body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert admin(gateways[0], "GET", "tenants/x").status_code == 404


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_odd_names_are_refused(gateways: list[Process], name: str) -> None:
    response = admin(gateways[0], "POST", "tenants", {"name": name})
    assert response.status_code == 422, response.text
    names = [t["name"] for t in admin(gateways[0], "GET", "tenants").json()["data"]]
    assert name not in names


def test_path_tricks_reach_no_other_route(gateways: list[Process]) -> None:
    gateway = gateways[0]
    for path in ("tenants/..%2Fkeys", "tenants/%2e%2e", "tenants/nobody", "tenants/a%2Fb"):
        for method in ("GET", "PATCH", "DELETE"):
            body = {"models": None} if method == "PATCH" else None
            response = admin(gateway, method, path, body)
            assert response.status_code in (404, 405), (method, path, response.text)
    assert admin(gateway, "PATCH", "tenants/nobody", {"limits": []}).status_code == 422
    unauthenticated = httpx.get(f"{gateway.url}/admin/v1/tenants", timeout=10)
    assert unauthenticated.status_code == 401
