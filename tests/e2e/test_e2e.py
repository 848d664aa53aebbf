"""The gateway in front of real vLLM (CPU build): the OpenAI SDK sees vLLM's answers unchanged."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import CHAT_MODEL, EMBED_MODEL, UNSERVED_MODEL, Server
from tests.servers import Process

PROMPT = "The capital of France is"
CHECK = [sys.executable, "-m", "gateway", "check"]


@pytest.fixture(scope="module")
def client(e2e_gateway: Process) -> Iterator[openai.OpenAI]:
    # The client's key is not vLLM's: the gateway must swap it for the replica's.
    url = f"{e2e_gateway.url}/v1"
    with openai.OpenAI(base_url=url, api_key=e2e_gateway.api_key, max_retries=0) as sdk:
        yield sdk


def vllm_metric(server: Server, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"vLLM exposes no {name} {labels}")


def test_models_lists_the_configured_models(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert ids == [CHAT_MODEL, EMBED_MODEL, UNSERVED_MODEL]


def test_completion_is_greedy_paris(client: openai.OpenAI) -> None:
    answer = client.completions.create(model=CHAT_MODEL, prompt=PROMPT, max_tokens=3, temperature=0)
    assert answer.choices[0].text.startswith(" Paris")
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 3


def test_chat_completion(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=8,
        temperature=0,
    )
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content
    assert answer.usage is not None
    assert answer.usage.prompt_tokens > 5


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_stream_with_and_without_usage(client: openai.OpenAI, include_usage: bool) -> None:
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": include_usage},
    )
    chunks = list(stream)
    content = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert content, "vLLM streamed no content through the gateway"
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] == "length"
    usage_chunks = [chunk for chunk in chunks if chunk.usage is not None]
    if include_usage:
        assert len(usage_chunks) == 1
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 6
    else:
        assert usage_chunks == []


def test_completion_stream(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model=CHAT_MODEL, prompt=PROMPT, max_tokens=4, temperature=0, stream=True
    )
    text = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    assert text.startswith(" Paris")


def test_embeddings(client: openai.OpenAI) -> None:
    packed = client.embeddings.create(model=EMBED_MODEL, input=["hello world", "bonjour"])
    floats = client.embeddings.create(
        model=EMBED_MODEL, input="hello world", encoding_format="float"
    )
    assert [len(item.embedding) for item in packed.data] == [384, 384]
    assert packed.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-5)


def test_unknown_model_is_refused_by_the_gateway(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    assert caught.value.code == "model_not_found"


def test_vllm_not_found_passes_through(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model=UNSERVED_MODEL, prompt="x", max_tokens=1)
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["message"].startswith(f"The model `{UNSERVED_MODEL}` does not exist.")
    assert body["type"] == "NotFoundError"
    assert body["param"] == "model"


def test_vllm_bad_request_passes_through(client: openai.OpenAI) -> None:
    # Well-formed for the gateway's request contract, too long for vLLM's context.
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=CHAT_MODEL, prompt="x", max_tokens=100_000)
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "BadRequestError"
    assert body["param"] == "max_tokens"
    # A value the contract refuses never reaches vLLM: the gateway's own 400.
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=CHAT_MODEL, prompt="x", max_tokens=-1)
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["type"] == "invalid_request_error"
    assert refused.value.body["param"] == "max_tokens"


def test_client_disconnect_aborts_vllm_generation(e2e_gateway: Process, vllm_chat: Server) -> None:
    # vLLM 0.32 neither logs client aborts at INFO nor counts them in request_success, so the
    # proof is that the request stopped running long before its 1000 tokens, unfinished.
    finished_before = vllm_metric(vllm_chat, "vllm:request_success_total", finished_reason="length")
    generated_before = vllm_metric(vllm_chat, "vllm:generation_tokens_total")
    body = {
        "model": CHAT_MODEL,
        "prompt": "Write a very long story about a dragon.",
        "max_tokens": 1000,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    url = f"{e2e_gateway.url}/v1/completions"
    with httpx.stream("POST", url, json=body, headers=e2e_gateway.auth, timeout=60) as reply:
        events = 0
        for line in reply.iter_lines():
            events += line.startswith("data: ")
            if events == 3:
                break
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if vllm_metric(vllm_chat, "vllm:num_requests_running") == 0:
            break
        time.sleep(0.2)
    assert vllm_metric(vllm_chat, "vllm:num_requests_running") == 0
    finished_after = vllm_metric(vllm_chat, "vllm:request_success_total", finished_reason="length")
    assert finished_after == finished_before
    # Had the gateway kept reading, vLLM would have generated all 1000 tokens.
    assert vllm_metric(vllm_chat, "vllm:generation_tokens_total") - generated_before < 500


def test_check_command_passes_against_the_gateway(e2e_gateway: Process) -> None:
    result = subprocess.run(
        [*CHECK, "--url", e2e_gateway.url, "--test", "all", "--api-key", str(e2e_gateway.api_key)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASS") == 3
