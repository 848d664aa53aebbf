"""Simulator fidelity on the Responses routes: the same requests to real vLLM and to the
simulator, compared by shape (every key, in order, and each value's JSON type) and by
framing; generated text, ids, times and token counts differ by nature and are not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Server
from tests.e2e.test_fidelity import simulator
from tests.e2e.test_fidelity_messages import shape, stream_outline

INPUT = "Name three colors."


@pytest.fixture(scope="module")
def pair(module_tmp: Path, vllm_chat: Server) -> Iterator[tuple[Server, Server]]:
    with simulator(module_tmp, vllm_chat) as sim:
        yield vllm_chat, sim


def post(server: Server, path: str, body: dict[str, object] | None = None) -> httpx.Response:
    if body is None:
        return httpx.post(f"{server.url}{path}", headers=server.headers, timeout=120)
    body = {"model": server.model, **body}
    return httpx.post(f"{server.url}{path}", json=body, headers=server.headers, timeout=120)


def test_a_response_and_its_retrieval(pair: tuple[Server, Server]) -> None:
    real, fake = (post(s, "/v1/responses", {"input": INPUT, "max_output_tokens": 5}) for s in pair)
    assert (real.status_code, fake.status_code) == (200, 200)
    assert shape(real.json()) == shape(fake.json())
    assert real.json()["status"] == fake.json()["status"] == "incomplete"
    for server, made in zip(pair, (real, fake), strict=True):
        url = f"{server.url}/v1/responses/{made.json()['id']}"
        stored = httpx.get(url, headers=server.headers, timeout=30)
        assert stored.status_code == 200 and shape(stored.json()) == shape(made.json())
    cancels = [
        post(server, f"/v1/responses/{made.json()['id']}/cancel")
        for server, made in zip(pair, (real, fake), strict=True)
    ]
    assert [c.status_code for c in cancels] == [400, 400]
    assert cancels[0].json() == cancels[1].json()


def test_a_streamed_response(pair: tuple[Server, Server]) -> None:
    body = {"input": INPUT, "max_output_tokens": 5, "stream": True}
    real, fake = (post(server, "/v1/responses", body) for server in pair)
    assert real.headers["content-type"] == fake.headers["content-type"]
    assert stream_outline(real.text) == stream_outline(fake.text)
    assert "[DONE]" not in real.text + fake.text


def test_an_unknown_id(pair: tuple[Server, Server]) -> None:
    answers = [
        httpx.get(f"{s.url}/v1/responses/resp_unknown", headers=s.headers, timeout=30) for s in pair
    ]
    assert [a.status_code for a in answers] == [404, 404]
    assert answers[0].json() == answers[1].json()
