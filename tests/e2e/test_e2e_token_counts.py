"""Real vLLM: the usage the gateway records equals the tokenizer's own count.

The prompt is counted by vLLM's `/tokenize` (asked directly: the gateway does
not serve that route), with the chat template applied for a chat; the
completion by the token ids the engine returns (`return_token_ids`). The
gateway's record for a fresh key, read from the admin API, must hold exactly
those numbers, whether the answer was streamed (the gateway then asks for the
usage event and removes it) or not.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import API_KEY, CHAT_MODEL, EMBED_MODEL, Server
from tests.servers import Process, free_port, gateway_config, run_gateway

ADMIN_TOKEN = "admin-token-for-e2e-token-counts-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MESSAGES = [{"role": "user", "content": "Name three colors of the rainbow."}]
PROMPT = "The three primary colors are"
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def counted(
    tmp_path_factory: pytest.TempPathFactory, vllm_chat: Server, vllm_embed: Server
) -> Iterator[Process]:
    """A gateway with an admin API in front of both vLLM servers."""
    config = gateway_config(free_port(), {})
    config["models"] = [
        {"name": server.model, "replicas": [{"url": server.url, "api_key": API_KEY}]}
        for server in (vllm_chat, vllm_embed)
    ]
    config["admin"] = {"tokens": [ADMIN_TOKEN]}
    with run_gateway(tmp_path_factory.mktemp("token-counts"), config) as gateway:
        yield gateway


def fresh_key(gateway: Process) -> tuple[dict[str, str], str]:
    body = {"tenant": "e2e", "name": "counted"}
    response = httpx.post(f"{gateway.url}/admin/v1/keys", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    created = response.json()
    return {"Authorization": f"Bearer {created['key']}"}, created["id"]


def recorded(gateway: Process, key_id: str) -> dict[str, int]:
    """The key's stored usage once its one request is written (batches of 1 s)."""
    url = f"{gateway.url}/admin/v1/keys/{key_id}/usage"
    deadline = time.monotonic() + 15
    while True:
        total: dict[str, int] = httpx.get(url, headers=ADMIN).json()["total"]
        if total["requests"] >= 1 or time.monotonic() > deadline:
            return total
        time.sleep(0.2)


def tokenized(server: Server, body: dict[str, object]) -> int:
    """The tokenizer's count, from vLLM's own `/tokenize`."""
    response = httpx.post(f"{server.url}/tokenize", json=body, headers=server.headers, timeout=30)
    assert response.status_code == 200, response.text
    count = response.json()["count"]
    assert isinstance(count, int) and count > 0
    return count


def streamed_token_ids(gateway: Process, headers: dict[str, str], body: dict[str, object]) -> int:
    """Generated token ids over the stream's events; each generating event carries its own."""
    total = 0
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=120
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[len("data: ") :])
            assert "usage" not in chunk or chunk["usage"] is None  # the client did not ask
            for choice in chunk["choices"]:
                total += len(choice.get("token_ids") or [])
    return total


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_chat_usage_equals_the_tokenizers_count(
    counted: Process, vllm_chat: Server, stream: bool
) -> None:
    headers, key_id = fresh_key(counted)
    body = {
        "model": CHAT_MODEL,
        "messages": MESSAGES,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        "return_token_ids": True,
        "stream": stream,
    }
    if stream:
        generated = streamed_token_ids(counted, headers, body)
    else:
        response = httpx.post(
            f"{counted.url}/v1/chat/completions", json=body, headers=headers, timeout=120
        )
        assert response.status_code == 200, response.text
        generated = len(response.json()["choices"][0]["token_ids"])
    prompt = tokenized(
        vllm_chat, {"model": CHAT_MODEL, "messages": MESSAGES, "add_generation_prompt": True}
    )
    assert generated == MAX_TOKENS  # ignore_eos: the engine ran to the cap
    usage = recorded(counted, key_id)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt, generated)


def test_completion_usage_equals_the_tokenizers_count(counted: Process, vllm_chat: Server) -> None:
    headers, key_id = fresh_key(counted)
    body = {
        "model": CHAT_MODEL,
        "prompt": [PROMPT, "Once upon a time"],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "return_token_ids": True,
    }
    response = httpx.post(f"{counted.url}/v1/completions", json=body, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    generated = sum(len(choice["token_ids"]) for choice in response.json()["choices"])
    prompt = sum(
        tokenized(vllm_chat, {"model": CHAT_MODEL, "prompt": text})
        for text in (PROMPT, "Once upon a time")
    )
    usage = recorded(counted, key_id)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt, generated)


def test_embedding_usage_equals_the_tokenizers_count(counted: Process, vllm_embed: Server) -> None:
    headers, key_id = fresh_key(counted)
    inputs = ["hello world", "the gateway counts every input"]
    body = {"model": EMBED_MODEL, "input": inputs}
    response = httpx.post(f"{counted.url}/v1/embeddings", json=body, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    prompt = sum(tokenized(vllm_embed, {"model": EMBED_MODEL, "prompt": text}) for text in inputs)
    usage = recorded(counted, key_id)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt, 0)
