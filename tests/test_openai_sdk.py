"""The official OpenAI SDK, sync and async, through a real gateway in front of the simulator."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.servers import Process, free_port, gateway_config, run_gateway

MODEL = "sim-model"
MESSAGES = [{"role": "user", "content": "The capital of France is"}]


@pytest.fixture(scope="module")
def client(gateway: Process) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.api_key, max_retries=0) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def broken_client(broken_gateway: Process) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{broken_gateway.url}/v1", api_key=broken_gateway.api_key, max_retries=0
    ) as sdk:
        yield sdk


def async_sdk(gateway: Process) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.api_key, max_retries=0)


def test_chat_completion(client: openai.OpenAI, sim: Process) -> None:
    answer = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    direct = httpx.post(
        f"{sim.url}/v1/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, "max_tokens": 5},
    ).json()
    assert answer.choices[0].message.content == direct["choices"][0]["message"]["content"]
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 5


def test_chat_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=6, stream=True
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert len(text.split()) == 6
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    last = list(stream)[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 4


def test_completion_plain_and_streamed(client: openai.OpenAI) -> None:
    plain = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=7)
    streamed = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=7, stream=True
    )
    text = "".join(chunk.choices[0].text for chunk in streamed if chunk.choices)
    assert plain.choices[0].text == text
    assert len(text.split()) == 7


def test_embeddings_base64_and_float(client: openai.OpenAI) -> None:
    default = client.embeddings.create(model=MODEL, input=["hello world", "bonjour"])
    floats = client.embeddings.create(model=MODEL, input="hello world", encoding_format="float")
    assert len(default.data) == 2
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, rel=1e-6)
    raw = client.embeddings.with_raw_response.create(
        model=MODEL, input="hello world", encoding_format="base64"
    )
    packed = raw.http_response.json()["data"][0]["embedding"]
    decoded = struct.unpack(f"<{len(floats.data[0].embedding)}f", base64.b64decode(packed))
    assert list(decoded) == pytest.approx(floats.data[0].embedding, rel=1e-6)


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_async_client_streams_and_plain(gateway: Process) -> None:
    async def main() -> tuple[str, str]:
        async with async_sdk(gateway) as client:
            plain = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=5
            )
            stream = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=5, stream=True
            )
            parts = [
                chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices
            ]
            return plain.choices[0].message.content or "", "".join(parts)

    plain, streamed = asyncio.run(main())
    assert plain == streamed != ""


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-unknown", messages=MESSAGES)
    assert caught.value.status_code == 404
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["param"] == "model"
    assert body["code"] == "model_not_found"


def test_invalid_input_is_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=-1)


@pytest.fixture(scope="module")
def unaccepting_port() -> Iterator[int]:
    """A listener whose accept queue is full: new connections hang in connect."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port: int = server.getsockname()[1]
        fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        yield port
        for filler in fillers:
            filler.close()


@pytest.fixture(scope="module")
def broken_gateway(module_tmp: Path, sim: Process, unaccepting_port: int) -> Iterator[Process]:
    """A gateway with a dead, an unaccepting and no replica, and short timeouts."""
    models = {
        "dead": [f"http://127.0.0.1:{free_port()}"],
        "unaccepting": [f"http://127.0.0.1:{unaccepting_port}"],
        "empty": [],
        MODEL: [sim.url],
    }
    config = gateway_config(free_port(), models, timeouts={"first_byte": 0.5, "connect": 0.5})
    with run_gateway(module_tmp, config) as process:
        yield process


@pytest.mark.parametrize(
    ("model", "headers", "status"),
    [
        ("dead", {}, 502),
        ("unaccepting", {}, 504),
        ("empty", {}, 503),
        (MODEL, {"x-sim-stall-ms": "3000"}, 504),
    ],
)
def test_upstream_failures_have_their_status(
    broken_client: openai.OpenAI, model: str, headers: dict[str, str], status: int
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        broken_client.chat.completions.create(model=model, messages=MESSAGES, extra_headers=headers)
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict)
    assert set(body) == {"message", "type", "param", "code"}


def test_streamed_timeout_before_first_byte_is_504(broken_client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        broken_client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            stream=True,
            extra_headers={"x-sim-stall-ms": "3000"},
        )
    assert caught.value.status_code == 504
