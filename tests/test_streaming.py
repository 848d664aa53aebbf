"""Streams pass through byte for byte, chunk by chunk, and die with their client."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import Process, free_port, gateway_config, run_gateway, run_simulator

MODEL = "sim-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a story"}]}


@pytest.fixture(scope="module")
def deterministic_sim(module_tmp: Path) -> Iterator[Process]:
    with run_simulator(module_tmp, "--deterministic") as process:
        yield process


@pytest.fixture(scope="module")
def deterministic_gateway(module_tmp: Path, deterministic_sim: Process) -> Iterator[Process]:
    config = gateway_config(free_port(), {MODEL: [deterministic_sim.url]}, timeouts={"idle": 1})
    with run_gateway(module_tmp, config) as process:
        yield process


def raw_stream(
    server: Process, body: dict[str, object], headers: dict[str, str] | None = None
) -> bytes:
    """The raw bytes of a stream from a simulator or (with its key) a gateway."""
    base_url = server.url
    headers = {**(headers or {}), **(server.auth if server.api_key else {})}
    with httpx.stream(
        "POST", f"{base_url}/v1/chat/completions", json=body, headers=headers, timeout=30
    ) as response:
        assert response.status_code == 200
        return response.read()


def engine_metric(sim: Process, name: str, **labels: str) -> float:
    """A `vllm:*` sample of SIM, as real vLLM also reports it (0 when absent)."""
    text = httpx.get(f"{sim.url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return sample.value
    return 0.0


def finished(sim: Process) -> float:
    """Requests the engine finished, whatever the reason."""
    text = httpx.get(f"{sim.url}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "vllm:request_success_total"
    )


def wait_until_idle(sim: Process, within_s: float) -> float:
    """`vllm:num_requests_running` once it is 0, or as it stands after WITHIN_S.

    The signal real vLLM gives when a request's connection closes: the engine
    aborts it and it stops running, long before its `max_tokens` were due.
    """
    deadline = time.monotonic() + within_s
    while (running := engine_metric(sim, "vllm:num_requests_running")) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    return running


@pytest.mark.parametrize("usage", [False, True])
def test_stream_bytes_equal_direct(
    deterministic_sim: Process, deterministic_gateway: Process, usage: bool
) -> None:
    body = {**CHAT, "max_tokens": 12, "stream": True}
    if usage:
        body["stream_options"] = {"include_usage": True}
    direct = raw_stream(deterministic_sim, body)
    through = raw_stream(deterministic_gateway, body)
    assert through == direct
    assert through.endswith(b"data: [DONE]\n\n")


def test_completion_stream_bytes_equal_direct(
    deterministic_sim: Process, deterministic_gateway: Process
) -> None:
    body = {"model": MODEL, "prompt": "Hello there", "max_tokens": 9, "stream": True}
    direct = httpx.post(f"{deterministic_sim.url}/v1/completions", json=body).content
    through = httpx.post(
        f"{deterministic_gateway.url}/v1/completions", json=body, headers=deterministic_gateway.auth
    ).content
    assert through == direct


def test_non_streamed_bytes_and_headers(
    deterministic_sim: Process, deterministic_gateway: Process
) -> None:
    body = {**CHAT, "max_tokens": 3}
    direct = httpx.post(f"{deterministic_sim.url}/v1/chat/completions", json=body)
    through = httpx.post(
        f"{deterministic_gateway.url}/v1/chat/completions",
        json=body,
        headers=deterministic_gateway.auth,
    )
    assert through.content == direct.content
    assert through.headers["content-type"] == direct.headers["content-type"]
    assert "server" not in through.headers
    assert len(through.headers["x-request-id"]) >= 16


@pytest.fixture(scope="module")
def slow_sim(module_tmp: Path) -> Iterator[Process]:
    with run_simulator(module_tmp, "--itl-ms", "200") as process:
        yield process


@pytest.fixture(scope="module")
def slow_gateway(module_tmp: Path, slow_sim: Process) -> Iterator[Process]:
    config = gateway_config(free_port(), {MODEL: [slow_sim.url]}, timeouts={"idle": 1})
    with run_gateway(module_tmp, config) as process:
        yield process


def test_chunks_arrive_as_they_are_sent(slow_gateway: Process) -> None:
    """With 200 ms between tokens, each token reaches the client on its own, not in a batch."""
    arrivals: list[float] = []
    body = {**CHAT, "max_tokens": 5, "stream": True}
    with httpx.stream(
        "POST", f"{slow_gateway.url}/v1/chat/completions", json=body, headers=slow_gateway.auth
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content":" ' in line:
                arrivals.append(time.monotonic())
    assert len(arrivals) == 5
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    # A buffering proxy would deliver tokens together (gaps near zero).
    assert min(gaps) > 0.1, gaps


def test_stream_disconnect_aborts_upstream(slow_sim: Process, slow_gateway: Process) -> None:
    done, generated = finished(slow_sim), engine_metric(slow_sim, "vllm:generation_tokens_total")
    body = {**CHAT, "max_tokens": 50, "stream": True}
    with httpx.stream(
        "POST", f"{slow_gateway.url}/v1/chat/completions", json=body, headers=slow_gateway.auth
    ) as response:
        events = 0
        for line in response.iter_lines():
            if line.startswith("data: "):
                events += 1
            if events == 3:
                assert engine_metric(slow_sim, "vllm:num_requests_running") == 1
                break  # closes the stream
    # Ten seconds of tokens were left: only an abort stops the request this soon.
    assert wait_until_idle(slow_sim, within_s=1.0) == 0
    assert finished(slow_sim) == done  # unfinished, as vLLM counts an abort
    assert engine_metric(slow_sim, "vllm:generation_tokens_total") - generated < 50


def test_waiting_client_disconnect_aborts_upstream(
    slow_sim: Process, slow_gateway: Process
) -> None:
    done, generated = finished(slow_sim), engine_metric(slow_sim, "vllm:generation_tokens_total")
    body = {**CHAT, "max_tokens": 50}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{slow_gateway.url}/v1/chat/completions",
            json=body,
            headers=slow_gateway.auth,
            timeout=0.5,
        )
    assert wait_until_idle(slow_sim, within_s=1.0) == 0
    assert finished(slow_sim) == done
    assert engine_metric(slow_sim, "vllm:generation_tokens_total") - generated < 50


def test_mid_stream_drop_ends_with_error_event(deterministic_gateway: Process) -> None:
    body = {**CHAT, "max_tokens": 10, "stream": True}
    raw = raw_stream(deterministic_gateway, body, headers={"x-sim-drop-after": "3"})
    events = [event for event in raw.decode().split("\n\n") if event]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["code"] == 502
    assert "interrupted" in error["message"]
    contents = [event for event in events if '"content":" ' in event]
    assert len(contents) == 3


def test_sdk_raises_on_mid_stream_error(deterministic_gateway: Process) -> None:
    url = f"{deterministic_gateway.url}/v1"
    with openai.OpenAI(
        base_url=url, api_key=deterministic_gateway.api_key, max_retries=0
    ) as client:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=10,
            stream=True,
            extra_headers={"x-sim-drop-after": "2"},
        )
        with pytest.raises(openai.APIError, match="interrupted"):
            list(stream)


def test_idle_gap_timeout_mid_stream(deterministic_gateway: Process) -> None:
    body = {**CHAT, "max_tokens": 4, "stream": True}
    raw = raw_stream(deterministic_gateway, body, headers={"x-sim-itl-ms": "3000"})
    events = [event for event in raw.decode().split("\n\n") if event]
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert "stopped sending" in error["message"]


def test_200_concurrent_streams_lose_nothing(
    deterministic_sim: Process, deterministic_gateway: Process
) -> None:
    """Each client gets exactly its own stream. The simulator's words repeat across
    prompts, so each request also asks for its own number of tokens: every expected text
    is unique, and two streams crossed between clients cannot go unnoticed."""
    requests = [(f"prompt number {index}", 10 + index) for index in range(200)]

    def body(prompt: str, max_tokens: int) -> dict[str, object]:
        return {**CHAT, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}

    async def one(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> list[str]:
        url = f"{deterministic_gateway.url}/v1/chat/completions"
        payload = {**body(prompt, max_tokens), "stream": True}
        async with client.stream("POST", url, json=payload) as response:
            assert response.status_code == 200
            return [line async for line in response.aiter_lines() if line]

    async def main() -> list[list[str]]:
        limits = httpx.Limits(max_connections=250)
        async with httpx.AsyncClient(
            limits=limits, timeout=60, headers=deterministic_gateway.auth
        ) as client:
            return await asyncio.gather(*(one(client, *request) for request in requests))

    results = asyncio.run(main())
    expected = [
        httpx.post(f"{deterministic_sim.url}/v1/chat/completions", json=body(*request)).json()[
            "choices"
        ][0]["message"]["content"]
        for request in requests
    ]
    assert len(set(expected)) == len(requests)  # no two clients expect the same text
    for (prompt, _), lines, text in zip(requests, results, expected, strict=True):
        assert lines[-1] == "data: [DONE]"
        deltas = [json.loads(line[6:])["choices"][0]["delta"] for line in lines[:-1]]
        received = "".join(delta.get("content", "") for delta in deltas)
        assert received == text, f"the client of {prompt!r} got another stream"
