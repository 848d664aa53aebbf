"""The simulator's Anthropic Messages routes, read as vLLM 0.32 reads them (lax types)."""

from __future__ import annotations

import json

import httpx

from tests.servers import Process

MESSAGES = [{"role": "user", "content": "one two three"}]


def events(text: str) -> list[tuple[str, dict[str, object]]]:
    parsed = []
    for block in text.split("\n\n"):
        if block:
            kind, data = block.split("\n")
            parsed.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return parsed


def test_lax_types_are_coerced_as_pydantic_does(sim: Process) -> None:
    body = {"model": "sim-model", "messages": MESSAGES, "max_tokens": "5", "stream": "true"}
    response = httpx.post(f"{sim.url}/v1/messages", json=body, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    stream = events(response.text)
    assert [kind for kind, _ in stream] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 5,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == kind for kind, data in stream)
    assert stream[-2][1]["usage"] == {"input_tokens": 3, "output_tokens": 5}


def test_a_message_and_a_token_count(sim: Process) -> None:
    body = {"model": "sim-model", "messages": MESSAGES, "max_tokens": 4.0, "system": "be brief"}
    message = httpx.post(f"{sim.url}/v1/messages", json=body, timeout=10).json()
    assert list(message) == ["id", "type", "role", "content", "model", "stop_reason", "usage"]
    assert message["usage"] == {"input_tokens": 5, "output_tokens": 4}
    assert message["stop_reason"] == "max_tokens"
    del body["max_tokens"]
    counted = httpx.post(f"{sim.url}/v1/messages/count_tokens", json=body, timeout=10)
    assert counted.json() == {"input_tokens": 5, "context_management": {"original_input_tokens": 5}}


def test_refusals(sim: Process) -> None:
    url = f"{sim.url}/v1/messages"
    missing = httpx.post(url, json={"model": "sim-model", "messages": MESSAGES}, timeout=10)
    assert missing.status_code == 400 and "max_tokens" in missing.json()["error"]["param"]
    body = {"model": "other", "messages": MESSAGES, "max_tokens": 5}
    unknown = httpx.post(url, json=body, timeout=10)
    assert unknown.status_code == 404
    assert unknown.json()["type"] == "error"
    assert unknown.json()["error"]["type"] == "NotFoundError"
