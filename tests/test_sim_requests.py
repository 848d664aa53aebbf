"""The simulator's request checks and error bodies: vLLM's statuses, types, params and messages.

`tests/e2e/test_fidelity.py` compares these with real vLLM; here they are
pinned without it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import Process, run_simulator

MODEL = "sim-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a short story"}]}
COMPLETION = {"model": MODEL, "prompt": "Once upon a time"}
BAD = "BadRequestError"
INVALID = "Bad Request"  # FastAPI's validation, before vLLM's own checks


@pytest.fixture(scope="module")
def keyed_sim(module_tmp: Path) -> Iterator[Process]:
    with run_simulator(module_tmp, "--api-key", "sim-secret") as process:
        yield process


def test_unknown_model_is_404(sim: Process) -> None:
    response = httpx.post(f"{sim.url}/v1/chat/completions", json={**CHAT, "model": "gpt-x"})
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "The model `gpt-x` does not exist. Valid aliases: sim-model.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }
    # vLLM 0.32's embeddings endpoint names neither the served model nor the param.
    embedding = httpx.post(f"{sim.url}/v1/embeddings", json={"model": "gpt-x", "input": "hi"})
    assert embedding.json()["error"]["message"] == "The model `gpt-x` does not exist."
    assert embedding.json()["error"]["param"] is None


@pytest.mark.parametrize(
    ("path", "body", "kind", "param"),
    [
        ("/v1/chat/completions", b"{not json", INVALID, "body.1"),
        ("/v1/chat/completions", b"[1]", INVALID, "body"),
        ("/v1/chat/completions", {"model": "nope"}, INVALID, "body.messages"),
        ("/v1/chat/completions", {**CHAT, "messages": []}, BAD, None),
        ("/v1/chat/completions", {**CHAT, "max_tokens": "x"}, INVALID, "body.max_tokens"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": []}, INVALID, "body.max_tokens"),
        ("/v1/chat/completions", {**CHAT, "stream": []}, INVALID, "body.stream"),
        ("/v1/completions", {"model": MODEL}, BAD, "prompt"),
        ("/v1/completions", {**COMPLETION, "max_tokens": 0}, BAD, "max_tokens"),
        ("/v1/completions", {**COMPLETION, "stream_options": {}}, BAD, "stream_options"),
        ("/v1/completions", {**COMPLETION, "n": 0}, BAD, None),
        ("/v1/completions", {**COMPLETION, "n": None}, INVALID, "body.n"),
        ("/v1/chat/completions", {**CHAT, "n": 2, "temperature": 0}, BAD, None),
        ("/v1/completions", {**COMPLETION, "prompt": ["a", [1]]}, INVALID, "body.prompt"),
        ("/v1/embeddings", {"model": MODEL}, INVALID, "body.input"),
        ("/v1/embeddings", {"model": MODEL, "input": []}, BAD, None),
        ("/v1/embeddings", {"model": MODEL, "input": "x", "dimensions": 384}, BAD, None),
    ],
)
def test_bad_requests_are_400_in_vllm_shape(
    sim: Process, path: str, body: bytes | dict[str, object], kind: str, param: str | None
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(
        f"{sim.url}{path}", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == (kind, param, 400)
    assert error["message"]


def test_json_only(sim: Process) -> None:
    response = httpx.post(
        f"{sim.url}/v1/chat/completions",
        content=json.dumps(CHAT),
        headers={"content-type": "text/plain"},
    )
    media_type = "Unsupported Media Type: Only 'application/json' is allowed"
    assert response.json()["error"] == {
        "message": f"1 validation error:\n  {media_type}",
        "type": INVALID,
        "param": None,
        "code": 400,
    }


def test_lax_fields_are_accepted_as_pydantic_accepts_them(sim: Process) -> None:
    body = {**COMPLETION, "max_tokens": "2", "stream": "yes"}
    response = httpx.post(f"{sim.url}/v1/completions", json=body)
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.text.count("data: ") == 3  # two tokens, then [DONE]


def test_context_limits(sim: Process) -> None:
    url = f"{sim.url}/v1/completions"
    too_many = httpx.post(url, json={**COMPLETION, "max_tokens": 5000}).json()["error"]
    assert too_many["message"].startswith("max_tokens=5000 cannot be greater than max_model_len")
    long_prompt = httpx.post(url, json={**COMPLETION, "prompt": "hi " * 5000}).json()["error"]
    assert long_prompt["param"] == "input_tokens"
    assert "at least 4097 input tokens" in long_prompt["message"]
    # A limit past the end of the context is cut to what is left, as vLLM does.
    capped = httpx.post(url, json={**COMPLETION, "max_tokens": 4095}).json()
    assert capped["usage"]["completion_tokens"] == 4092
    assert capped["choices"][0]["finish_reason"] == "length"


def test_unknown_path_and_wrong_method(sim: Process) -> None:
    missing = httpx.get(f"{sim.url}/v1/nothing-here")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
    wrong = httpx.get(f"{sim.url}/v1/chat/completions")
    assert (wrong.status_code, wrong.json()) == (405, {"detail": "Method Not Allowed"})


def test_api_key(keyed_sim: Process) -> None:
    url = f"{keyed_sim.url}/v1/models"
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "sim-secret"}):
        response = httpx.get(url, headers=headers)
        assert response.status_code == 401
        assert response.content == b'{"error":"Unauthorized"}'
    assert httpx.get(url, headers={"authorization": "bearer sim-secret"}).status_code == 200
    chat = httpx.post(
        f"{keyed_sim.url}/v1/chat/completions",
        json=CHAT,
        headers={"authorization": "Bearer sim-secret"},
    )
    assert chat.status_code == 200
    assert httpx.get(f"{keyed_sim.url}/health").status_code == 200
