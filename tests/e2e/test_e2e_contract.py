"""Real vLLM: the request contract holds where vLLM itself would coerce or batch.

vLLM honours `"max_tokens": "4000"` and a list of prompts; these tests check,
against vLLM's own token counters, that a capped key gets no more than its cap
for every prompt and choice, and is charged at least what vLLM generated.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import API_KEY, CHAT_MODEL, Server
from tests.e2e.test_e2e import vllm_metric
from tests.servers import Process, free_port, gateway_config, run_gateway

ADMIN_TOKEN = "admin-token-for-e2e-contract-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CAP = 8


@pytest.fixture(scope="module")
def capped(
    tmp_path_factory: pytest.TempPathFactory, vllm_chat: Server
) -> Iterator[tuple[Process, str, str]]:
    """A gateway with an admin API, and a key capped at CAP tokens: (gateway, key, id)."""
    config = gateway_config(free_port(), {})
    config["models"] = [
        {"name": CHAT_MODEL, "replicas": [{"url": vllm_chat.url, "api_key": API_KEY}]}
    ]
    config["admin"] = {"tokens": [ADMIN_TOKEN]}
    with run_gateway(tmp_path_factory.mktemp("contract"), config) as gateway:
        body = {"tenant": "e2e", "name": "capped", "limits": {"max_tokens": CAP}}
        created = httpx.post(f"{gateway.url}/admin/v1/keys", json=body, headers=ADMIN).json()
        yield gateway, created["key"], created["id"]


def post(gateway: Process, key: str, raw: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return httpx.post(f"{gateway.url}/v1/completions", content=raw, headers=headers, timeout=120)


def test_a_string_max_tokens_vllm_would_honour_is_refused(
    capped: tuple[Process, str, str], vllm_chat: Server
) -> None:
    gateway, key, _ = capped
    raw = json.dumps(
        {"model": CHAT_MODEL, "prompt": "Count:", "max_tokens": "40", "ignore_eos": True}
    )
    headers = {**vllm_chat.headers, "Content-Type": "application/json"}
    direct = httpx.post(
        f"{vllm_chat.url}/v1/completions", content=raw, headers=headers, timeout=120
    )
    assert direct.status_code == 200, direct.text  # vLLM coerces the string
    assert direct.json()["usage"]["completion_tokens"] > CAP
    refused = post(gateway, key, raw)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "max_tokens"


def test_batched_prompts_and_choices_are_each_capped_and_charged(
    capped: tuple[Process, str, str], vllm_chat: Server
) -> None:
    gateway, key, key_id = capped
    before = vllm_metric(vllm_chat, "vllm:generation_tokens_total")
    body = {
        "model": CHAT_MODEL,
        "prompt": ["Count to twenty: one, two,", "List many colors: red,"],
        "n": 2,
        "temperature": 0.8,
        "max_tokens": 4000.0,
        "ignore_eos": True,
    }
    response = post(gateway, key, json.dumps(body))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert sorted(choice["index"] for choice in answer["choices"]) == [0, 1, 2, 3]
    assert answer["usage"]["completion_tokens"] == 4 * CAP  # ignore_eos: each runs to the cap
    generated = vllm_metric(vllm_chat, "vllm:generation_tokens_total") - before
    assert generated == 4 * CAP
    deadline = time.monotonic() + 15
    while True:
        usage = httpx.get(f"{gateway.url}/admin/v1/keys/{key_id}/usage", headers=ADMIN).json()
        if usage["total"]["completion_tokens"] >= generated or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert usage["total"]["completion_tokens"] >= generated
    assert usage["total"]["prompt_tokens"] == answer["usage"]["prompt_tokens"]
