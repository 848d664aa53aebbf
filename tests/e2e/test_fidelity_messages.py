"""Simulator fidelity on Anthropic's Messages routes: the same requests to real vLLM and to
the simulator, compared by shape (every key, in order, and each value's JSON type) and by
framing; generated text and token counts differ by nature and are not compared."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Server
from tests.e2e.test_fidelity import simulator

MESSAGES = [{"role": "user", "content": "Name three colors."}]


@pytest.fixture(scope="module")
def pair(module_tmp: Path, vllm_chat: Server) -> Iterator[tuple[Server, Server]]:
    with simulator(module_tmp, vllm_chat) as sim:
        yield vllm_chat, sim


def post(server: Server, path: str, body: dict[str, object]) -> httpx.Response:
    body = {"model": server.model, **body}
    return httpx.post(f"{server.url}{path}", json=body, headers=server.headers, timeout=120)


def shape(value: object) -> object:
    """VALUE with every leaf replaced by its JSON type; a list by its first item's shape."""
    if isinstance(value, dict):
        return [(key, shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def stream_outline(text: str) -> list[tuple[str, object]]:
    """Each event's name and data shape, consecutive repeats (the token deltas) folded."""
    outline: list[tuple[str, object]] = []
    for block in text.split("\n\n"):
        if not block:
            continue
        name, data = block.split("\n")
        entry = (name, shape(httpx.Response(200, content=data.removeprefix("data: ")).json()))
        if not outline or outline[-1] != entry:
            outline.append(entry)
    return outline


def test_a_message(pair: tuple[Server, Server]) -> None:
    real, fake = (
        post(server, "/v1/messages", {"messages": MESSAGES, "max_tokens": 5}) for server in pair
    )
    assert (real.status_code, fake.status_code) == (200, 200)
    assert shape(real.json()) == shape(fake.json())
    assert real.json()["stop_reason"] == fake.json()["stop_reason"] == "max_tokens"


def test_a_streamed_message(pair: tuple[Server, Server]) -> None:
    body = {"messages": MESSAGES, "max_tokens": 5, "stream": True}
    real, fake = (post(server, "/v1/messages", body) for server in pair)
    assert real.headers["content-type"] == fake.headers["content-type"]
    assert stream_outline(real.text) == stream_outline(fake.text)
    assert "[DONE]" not in real.text + fake.text


def test_a_token_count(pair: tuple[Server, Server]) -> None:
    real, fake = (
        post(server, "/v1/messages/count_tokens", {"messages": MESSAGES}) for server in pair
    )
    assert (real.status_code, fake.status_code) == (200, 200)
    assert shape(real.json()) == shape(fake.json())


@pytest.mark.parametrize(
    "body",
    [
        {"messages": MESSAGES},
        {"messages": MESSAGES, "max_tokens": 5, "model": "not-served"},
        {"messages": MESSAGES, "max_tokens": "five"},
    ],
    ids=["no-max-tokens", "unknown-model", "unparsable-max-tokens"],
)
def test_an_error(pair: tuple[Server, Server], body: dict[str, object]) -> None:
    real, fake = (post(server, "/v1/messages", body) for server in pair)
    assert real.status_code == fake.status_code, (real.text, fake.text)
    assert shape(real.json()) == shape(fake.json()), (real.text, fake.text)
