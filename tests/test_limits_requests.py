"""Limits and usage through one real gateway: headers, 429s, leases, max_tokens, accounting."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.servers import (
    Process,
    free_port,
    gateway_config,
    metric,
    run_gateway,
    run_simulator,
)

ADMIN_TOKEN = "admin-token-for-limit-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FAST, SLOW = "sim-model", "slow-model"
REFUSALS = "gateway_rate_limit_refusals_total"
PROMPT = [{"role": "user", "content": "Count the tokens of this request"}]


@pytest.fixture(scope="module")
def slow_sim(module_tmp: Path) -> Iterator[Process]:
    # 20 tokens take two seconds: long enough to hold a concurrency slot.
    with run_simulator(module_tmp, "--itl-ms", "100", model=SLOW) as process:
        yield process


def limited_gateway(
    module_tmp: Path, sim: Process, slow_sim: Process, **limits: object
) -> dict[str, object]:
    config = gateway_config(free_port(), {FAST: [sim.url], SLOW: [slow_sim.url]})
    config["admin"] = {"tokens": [ADMIN_TOKEN]}
    config["limits"] = limits
    return config


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, sim: Process, slow_sim: Process) -> Iterator[Process]:
    config = limited_gateway(
        module_tmp, sim, slow_sim, tenants={"shared": {"requests_per_minute": 4}}
    )
    with run_gateway(module_tmp, config) as process:
        yield process


def new_key(gateway: Process, tenant: str = "acme", **limits: object) -> tuple[str, str]:
    body = {"tenant": tenant, "name": "limits", "limits": limits}
    response = httpx.post(f"{gateway.url}/admin/v1/keys", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    created = response.json()
    return created["key"], created["id"]


def chat(gateway: Process, key: str, model: str = FAST, **fields: object) -> httpx.Response:
    body = {"model": model, "messages": PROMPT, "max_tokens": 5, **fields}
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def sdk(gateway: Process, key: str, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=retries)


def test_rate_headers_on_success_and_refusal(gateway: Process) -> None:
    key, _ = new_key(gateway, requests_per_minute=2, tokens_per_minute=100_000)
    first = chat(gateway, key)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-limit-tokens"] == "100000"
    assert 0 < int(first.headers["x-ratelimit-remaining-tokens"]) < 100_000
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    assert chat(gateway, key).status_code == 200
    refused = chat(gateway, key)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert "requests per minute" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-ratelimit-limit-tokens" in refused.headers
    assert key not in refused.text


def test_the_sdk_raises_rate_limit_error(gateway: Process) -> None:
    key, _ = new_key(gateway, requests_per_minute=1)
    with sdk(gateway, key) as client:
        client.chat.completions.create(model=FAST, messages=PROMPT, max_tokens=2)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model=FAST, messages=PROMPT, max_tokens=2)  # type: ignore[arg-type]
    assert refused.value.status_code == 429
    assert refused.value.response.headers["retry-after"]


def hold_a_stream(gateway: Process, key: str, started: threading.Event) -> threading.Thread:
    def run() -> None:
        with (
            sdk(gateway, key) as client,
            client.chat.completions.create(
                model=SLOW,
                messages=PROMPT,
                max_tokens=20,
                stream=True,  # type: ignore[arg-type]
            ) as stream,
        ):
            for _ in stream:
                started.set()

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(10)
    return thread


def test_the_sdk_retry_honours_retry_after_and_succeeds(gateway: Process) -> None:
    key, _ = new_key(gateway, concurrent_requests=1)
    refusals = metric(gateway.url, REFUSALS, kind="concurrent_requests")
    holder = hold_a_stream(gateway, key, threading.Event())
    # Refused while the stream holds the one slot; the SDK waits Retry-After and tries again.
    with sdk(gateway, key, retries=5) as client:
        answer = client.chat.completions.create(
            model=FAST,
            messages=PROMPT,
            max_tokens=2,  # type: ignore[arg-type]
        )
    holder.join(10)
    assert answer.choices[0].message.content
    assert metric(gateway.url, REFUSALS, kind="concurrent_requests") > refusals


def test_a_disconnected_stream_frees_its_slot(gateway: Process) -> None:
    key, _ = new_key(gateway, concurrent_requests=1)
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": SLOW, "messages": PROMPT, "max_tokens": 50, "stream": True}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=30
    ) as response:
        assert response.status_code == 200
        chunks = response.iter_raw()
        next(chunks)
        assert chat(gateway, key).status_code == 429  # the stream holds the slot
    # The client left five seconds before the stream's end: the slot is free well before.
    deadline = time.monotonic() + 3
    status = 0
    while time.monotonic() < deadline and status != 200:
        status = chat(gateway, key).status_code
        time.sleep(0.05)
    assert status == 200


def test_a_tenant_limit_is_shared_by_its_keys(gateway: Process) -> None:
    keys = [new_key(gateway, tenant="shared")[0] for _ in range(2)]
    statuses = [chat(gateway, keys[i % 2]).status_code for i in range(10)]
    assert statuses.count(200) == 4 and statuses.count(429) == 6
    refused = chat(gateway, keys[0]).json()["error"]
    assert "tenant" in refused["message"]


def test_per_model_limits_apply_on_top_of_the_key_ones(gateway: Process) -> None:
    key, _ = new_key(gateway, requests_per_minute=10, models={FAST: {"requests_per_minute": 1}})
    assert chat(gateway, key).status_code == 200
    assert chat(gateway, key).status_code == 429
    assert chat(gateway, key, model=SLOW, max_tokens=1).status_code == 200


def test_tokens_per_minute_settle_to_the_real_usage(gateway: Process) -> None:
    key, _ = new_key(gateway, tokens_per_minute=50_000)
    # No max_tokens: each reserves its prompt and limits.default_completion_reserve (1024).
    first = chat(gateway, key, max_tokens=None)
    second = chat(gateway, key, max_tokens=None)
    used = first.json()["usage"]["total_tokens"]
    assert 0 < used < 1024  # far less than reserved
    # Both reserved the same; the first was settled to its real usage before the second.
    remaining = [int(r.headers["x-ratelimit-remaining-tokens"]) for r in (first, second)]
    assert remaining[0] - remaining[1] == used


def test_max_tokens_over_the_keys_cap_is_clamped(gateway: Process) -> None:
    key, _ = new_key(gateway, max_tokens=3)
    answer = chat(gateway, key, max_tokens=50)
    assert answer.status_code == 200
    assert answer.json()["usage"]["completion_tokens"] == 3
    unbounded = chat(gateway, key, max_tokens=None)
    assert unbounded.json()["usage"]["completion_tokens"] == 3


def test_max_tokens_over_the_cap_is_refused_when_so_configured(
    module_tmp: Path, sim: Process, slow_sim: Process
) -> None:
    config = limited_gateway(module_tmp, sim, slow_sim, max_tokens_policy="refuse")
    with run_gateway(module_tmp, config) as process:
        key, _ = new_key(process, max_tokens=3)
        with sdk(process, key) as client, pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(
                model=FAST,
                messages=PROMPT,
                max_completion_tokens=4,  # type: ignore[arg-type]
            )
        assert refused.value.body["param"] == "max_completion_tokens"  # type: ignore[index]
        assert chat(process, key, max_tokens=3).status_code == 200


def usage_of(gateway: Process, key_id: str, model: str) -> dict[str, int]:
    response = httpx.get(f"{gateway.url}/admin/v1/keys/{key_id}/usage", headers=ADMIN)
    assert response.status_code == 200, response.text
    models: dict[str, dict[str, int]] = response.json()["models"]
    return models.get(model, {})


def wait_for_usage(gateway: Process, key_id: str, model: str, requests: int) -> dict[str, int]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        usage = usage_of(gateway, key_id, model)
        if usage.get("requests", 0) >= requests:
            return usage
        time.sleep(0.1)
    return usage_of(gateway, key_id, model)


def test_usage_is_recorded_exactly_for_streams_and_bodies(gateway: Process, sim: Process) -> None:
    key, key_id = new_key(gateway)
    with (
        sdk(gateway, key) as client,
        openai.OpenAI(base_url=f"{sim.url}/v1", api_key="unused") as direct_client,
    ):
        plain = client.chat.completions.create(model=FAST, messages=PROMPT, max_tokens=7)  # type: ignore[arg-type]
        # A stream that did not ask for usage: the gateway asks, counts, and keeps it from
        # the client.
        chunks = list(
            client.chat.completions.create(model=FAST, messages=PROMPT, max_tokens=9, stream=True)
        )  # type: ignore[arg-type]
        assert all(chunk.usage is None for chunk in chunks)
        direct = direct_client.chat.completions.create(
            model=FAST,
            messages=PROMPT,
            max_tokens=9,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
        stream_usage = [chunk.usage for chunk in direct if chunk.usage][-1]
        embedded = client.embeddings.create(model=FAST, input=["one", "two three"])
    usage = wait_for_usage(gateway, key_id, FAST, 3)
    assert plain.usage is not None
    assert usage["requests"] == 3
    assert usage["prompt_tokens"] == (
        plain.usage.prompt_tokens + stream_usage.prompt_tokens + embedded.usage.prompt_tokens
    )
    assert (
        usage["completion_tokens"] == plain.usage.completion_tokens + stream_usage.completion_tokens
    )
