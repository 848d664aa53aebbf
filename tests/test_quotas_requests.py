"""Daily and monthly quotas through one real gateway (in-process backend) and a simulator:
reserve and settle, 429s with Retry-After to the period's end, headers, tenants, cost,
the admin API's view, soft thresholds, and hostile quota values."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openai
import pytest

from tests.servers import Process, free_port, gateway_config, metric, run_gateway

ADMIN_TOKEN = "admin-token-for-quota-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MODEL = "sim-model"
PROMPT = [{"role": "user", "content": "Count the tokens of this request"}]
PRICE = {"prompt": 0.5, "completion": 1.5}  # USD per million tokens
CROSSINGS = "gateway_quota_soft_threshold_crossings_total"


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, sim: Process) -> Iterator[Process]:
    config = gateway_config(free_port(), {MODEL: [sim.url]})
    config["admin"] = {"tokens": [ADMIN_TOKEN]}
    config["pricing"] = {MODEL: PRICE}
    config["limits"] = {
        "tenants": {"team": {"quotas": {"requests_per_day": 3, "tokens_per_month": 10**6}}},
        "quota_soft_threshold": 0.8,
    }
    with run_gateway(module_tmp, config) as process:
        yield process


def new_key(gateway: Process, tenant: str = "acme", **quotas: object) -> tuple[str, str]:
    body = {"tenant": tenant, "name": "quotas", "limits": {"quotas": quotas}}
    response = httpx.post(f"{gateway.url}/admin/v1/keys", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    created = response.json()
    return created["key"], created["id"]


def chat(gateway: Process, key: str, max_tokens: int = 5) -> httpx.Response:
    body = {"model": MODEL, "messages": PROMPT, "max_tokens": max_tokens}
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def quota(gateway: Process, path: str) -> dict[tuple[str, str], dict[str, object]]:
    response = httpx.get(f"{gateway.url}/admin/v1/{path}/quota", headers=ADMIN)
    assert response.status_code == 200, response.text
    return {(q["kind"], q["period"]): q for q in response.json()["quotas"]}


def seconds_to_midnight() -> float:
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


def test_a_daily_token_quota_passes_until_spent_then_429_until_midnight(
    gateway: Process,
) -> None:
    key, key_id = new_key(gateway, tokens_per_day=1000)
    answered: list[int] = []
    refused = None
    for _ in range(300):
        response = chat(gateway, key)
        if response.status_code != 200:
            refused = response
            break
        assert response.headers["x-ratelimit-limit-tokens-day"] == "1000"
        answered.append(response.json()["usage"]["total_tokens"])
        remaining = int(response.headers["x-ratelimit-remaining-tokens-day"])
        # Counted at admission: everything settled before, plus this request's reservation.
        assert remaining <= 1000 - sum(answered), (remaining, answered)
    assert refused is not None and refused.status_code == 429, "the quota never ran out"
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("tokens_per_day_quota_exceeded", "insufficient_quota")
    assert "resets at" in error["message"] and key not in refused.text
    wait = int(refused.headers["retry-after"])
    assert abs(wait - seconds_to_midnight()) < 10, (wait, seconds_to_midnight())
    assert abs(int(refused.headers["retry-after-ms"]) / 1000 - wait) <= 1
    assert refused.headers["x-ratelimit-remaining-tokens-day"] == str(1000 - sum(answered))
    assert refused.headers["x-ratelimit-reset-tokens-day"].endswith("s")
    state = quota(gateway, f"keys/{key_id}")[("tokens", "day")]
    assert (state["used"], state["reserved"]) == (sum(answered), 0)
    # Refused only once this request's reservation would have passed the limit.
    needs = int(re.findall(r"this request needs (\d+)", error["message"])[0])
    assert sum(answered) <= 1000 < sum(answered) + needs, (answered, needs)
    assert state["soft_threshold_crossed"] is True
    assert datetime.fromisoformat(str(state["reset_at"])).time() == datetime.min.time()


def test_the_sdk_sees_a_rate_limit_error_with_the_quota_type(gateway: Process) -> None:
    key, _ = new_key(gateway, requests_per_month=1)
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0) as client:
        client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=2)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model=MODEL, messages=PROMPT, max_tokens=2)  # type: ignore[arg-type]
    assert refused.value.type == "requests_per_month_quota_exceeded"
    now = datetime.now(UTC)
    first = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    wait = int(refused.value.response.headers["retry-after"])
    assert abs(wait - (first - now).total_seconds()) < 10


def test_a_tenant_quota_is_shared_by_its_keys(gateway: Process) -> None:
    first, _ = new_key(gateway, tenant="team")
    second, _ = new_key(gateway, tenant="team")
    statuses = [chat(gateway, key).status_code for key in (first, second, first)]
    assert statuses == [200, 200, 200]
    for key in (first, second):
        refused = chat(gateway, key)
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "requests_per_day_quota_exceeded"
        assert "tenant" in refused.json()["error"]["message"]
    state = quota(gateway, "tenants/team")
    assert state[("requests", "day")]["used"] == 3
    assert state[("requests", "day")]["remaining"] == 0
    assert state[("tokens", "month")]["used"] > 0
    labels = {"scope": "tenant", "period": "day", "kind": "requests", "tenant": "team"}
    assert metric(gateway.url, CROSSINGS, **labels) == 1
    assert metric(gateway.url, "gateway_quota_refusals_total", **labels) == 2


def test_a_cost_quota_counts_tokens_times_the_price(gateway: Process) -> None:
    key, key_id = new_key(gateway, cost_per_day=0.0001)  # 100 micro-dollars
    expected = 0
    for _ in range(3):
        response = chat(gateway, key, max_tokens=7)
        assert response.status_code == 200
        usage = response.json()["usage"]
        # USD per million tokens is micro-dollars per token; each request rounds up.
        cost = usage["prompt_tokens"] * 0.5 + usage["completion_tokens"] * 1.5
        expected += math.ceil(cost)
        assert response.headers["x-ratelimit-limit-cost-day"] == "0.000100"
    state = quota(gateway, f"keys/{key_id}")[("cost", "day")]
    assert (state["unit"], state["limit"], state["used"]) == ("micro_usd", 100, expected)


def test_soft_threshold_is_reported_once_per_period(gateway: Process) -> None:
    key, key_id = new_key(gateway, tenant="soft", requests_per_day=5)
    labels = {"scope": "key", "period": "day", "kind": "requests", "tenant": "soft"}
    for _ in range(3):
        assert chat(gateway, key).status_code == 200
    assert quota(gateway, f"keys/{key_id}")[("requests", "day")]["soft_threshold_crossed"] is False
    assert metric(gateway.url, CROSSINGS, **labels) == 0
    assert chat(gateway, key).status_code == 200  # 4 of 5: 80%
    assert quota(gateway, f"keys/{key_id}")[("requests", "day")]["soft_threshold_crossed"] is True
    assert chat(gateway, key).status_code == 200
    assert metric(gateway.url, CROSSINGS, **labels) == 1
    assert key_id not in httpx.get(f"{gateway.url}/metrics").text


def test_a_request_refused_by_a_rate_limit_costs_no_quota(gateway: Process) -> None:
    body = {
        "tenant": "acme",
        "limits": {"requests_per_minute": 1, "quotas": {"requests_per_day": 5}},
    }
    created = httpx.post(f"{gateway.url}/admin/v1/keys", json=body, headers=ADMIN).json()
    assert chat(gateway, created["key"]).status_code == 200
    refused = chat(gateway, created["key"])
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "requests"
    state = quota(gateway, f"keys/{created['id']}")[("requests", "day")]
    assert (state["used"], state["reserved"]) == (1, 0)


def test_a_quota_lowered_below_the_usage_refuses_at_once(gateway: Process) -> None:
    key, key_id = new_key(gateway, tokens_per_day=10_000)
    assert chat(gateway, key).status_code == 200
    used = quota(gateway, f"keys/{key_id}")[("tokens", "day")]["used"]
    assert isinstance(used, int) and used > 10
    patch = {"limits": {"quotas": {"tokens_per_day": 10}}}
    response = httpx.patch(f"{gateway.url}/admin/v1/keys/{key_id}", json=patch, headers=ADMIN)
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 10  # the key cache picks the change up
    while (refused := chat(gateway, key)).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert refused.status_code == 429
    state = quota(gateway, f"keys/{key_id}")[("tokens", "day")]
    assert (state["limit"], state["remaining"]) == (10, 0)
    assert state["used"] >= used


@pytest.mark.parametrize(
    "quotas",
    [
        {"tokens_per_day": "1000"},
        {"tokens_per_day": True},
        {"tokens_per_day": 1.5},
        {"tokens_per_day": -1},
        {"requests_per_month": 10**16},
        {"cost_per_day": -0.5},
        {"cost_per_day": "1"},
        {"cost_per_day": 10**10},
        {"tokens_per_week": 5},
        [1000],
    ],
)
def test_hostile_quota_values_are_refused(gateway: Process, quotas: object) -> None:
    body = {"tenant": "acme", "limits": {"quotas": quotas}}
    response = httpx.post(f"{gateway.url}/admin/v1/keys", json=body, headers=ADMIN)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert str(error["param"]).startswith("limits.quotas")


def test_huge_and_zero_quotas_round_trip(gateway: Process) -> None:
    key, key_id = new_key(gateway, tokens_per_month=10**15, requests_per_day=0, cost_per_month=1e9)
    got = httpx.get(f"{gateway.url}/admin/v1/keys/{key_id}", headers=ADMIN).json()
    quotas = got["limits"]["quotas"]
    assert (quotas["tokens_per_month"], quotas["requests_per_day"]) == (10**15, 0)
    assert quotas["cost_per_month"] == 1e9
    refused = chat(gateway, key)  # a quota of 0 admits nothing
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "requests_per_day_quota_exceeded"


def test_unknown_key_and_tenant_without_quotas(gateway: Process) -> None:
    missing = httpx.get(f"{gateway.url}/admin/v1/keys/aaaaaaaaaaaaaaaa/quota", headers=ADMIN)
    assert missing.status_code == 404
    assert quota(gateway, "tenants/nobody") == {}


def test_a_whole_float_is_the_count_json_schema_allows(gateway: Process) -> None:
    """1000.0 is an integer to JSON Schema (and the API tools that follow it): stored as
    1000, where "1000", true and 1.5 are refused above."""
    body = {"tenant": "acme", "limits": {"quotas": {"tokens_per_day": 1000.0}}}
    created = httpx.post(f"{gateway.url}/admin/v1/keys", json=body, headers=ADMIN)
    assert created.status_code == 201, created.text
    got = httpx.get(f"{gateway.url}/admin/v1/keys/{created.json()['id']}", headers=ADMIN).json()
    stored = got["limits"]["quotas"]["tokens_per_day"]
    assert stored == 1000 and isinstance(stored, int)
