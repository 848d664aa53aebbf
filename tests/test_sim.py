"""The vLLM simulator, as a real process: protocol shapes, framing, faults, aborts, metrics."""

from __future__ import annotations

import base64
import json
import math
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import Process, run_simulator

MODEL = "sim-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a short story"}]}
COMPLETION = {"model": MODEL, "prompt": "Once upon a time"}


@pytest.fixture(scope="module")
def deterministic_sim(module_tmp: Path) -> Iterator[Process]:
    with run_simulator(module_tmp, "--deterministic") as process:
        yield process


def metric(sim: Process, name: str, **labels: str) -> float:
    """The value of sample NAME whose labels include LABELS (0 when absent)."""
    text = httpx.get(f"{sim.url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return sample.value
    return 0.0


def wait_for(sim: Process, name: str, value: float, within_s: float, **labels: str) -> float:
    deadline = time.monotonic() + within_s
    while (current := metric(sim, name, **labels)) != value and time.monotonic() < deadline:
        time.sleep(0.05)
    return current


def sse_payloads(raw: bytes) -> list[str]:
    """The `data:` payloads of a complete SSE body, checking vLLM's framing on the way."""
    assert raw.endswith(b"\n\n")
    events = raw.decode().split("\n\n")[:-1]
    assert all(event.startswith("data: ") for event in events)
    return [event.removeprefix("data: ") for event in events]


def stream(url: str, path: str, body: dict[str, object]) -> list[str]:
    with httpx.stream("POST", f"{url}{path}", json=body, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        return sse_payloads(response.read())


def test_models_list(sim: Process) -> None:
    response = httpx.get(f"{sim.url}/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    [card] = body["data"]
    assert card["id"] == card["root"] == MODEL
    assert card["owned_by"] == "vllm-gateway-simulator"
    assert card["max_model_len"] == 4096
    assert (card["object"], card["parent"]) == ("model", None)
    assert isinstance(card["created"], int)
    [permission] = card["permission"]
    assert permission["object"] == "model_permission"
    assert permission["id"].startswith("modelperm-")


def test_startup_log_says_simulator(sim: Process) -> None:
    assert f"vLLM SIMULATOR (not a real model) serving '{MODEL}' on http://" in sim.log()


def test_health_is_empty_200(sim: Process) -> None:
    response = httpx.get(f"{sim.url}/health")
    assert (response.status_code, response.content) == (200, b"")


@pytest.mark.parametrize("usage", [False, True])
def test_chat_stream_framing(sim: Process, usage: bool) -> None:
    body: dict[str, object] = {**CHAT, "max_tokens": 5, "stream": True}
    if usage:
        body["stream_options"] = {"include_usage": True}
    payloads = stream(sim.url, "/v1/chat/completions", body)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["id"].startswith("chatcmpl-")
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = chunks[1:6]
    assert all(chunk["choices"][0]["delta"]["content"].startswith(" ") for chunk in contents)
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in contents[:4])
    # As in vLLM 0.32, a "length" finish rides on the last token's chunk.
    finish = chunks[5]["choices"][0]
    assert (finish["finish_reason"], finish["stop_reason"]) == ("length", None)
    assert all("usage" not in chunk for chunk in chunks[:6])
    # Only the last event before [DONE] carries the fingerprint.
    marked = [index for index, chunk in enumerate(chunks) if "system_fingerprint" in chunk]
    assert marked == [len(chunks) - 1]
    if usage:
        assert len(chunks) == 7
        assert chunks[6]["choices"] == []
        assert chunks[6]["usage"] == {
            "prompt_tokens": 5,
            "total_tokens": 10,
            "completion_tokens": 5,
        }
    else:
        assert len(chunks) == 6


def test_stream_without_max_tokens_stops_on_eos(sim: Process) -> None:
    payloads = stream(sim.url, "/v1/chat/completions", {**CHAT, "stream": True})
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    assert len(chunks) == 17  # the role, 15 words, then the end-of-sequence token
    finish = chunks[-1]["choices"][0]
    assert (finish["delta"], finish["finish_reason"], finish["stop_reason"]) == (
        {"content": ""},
        "stop",
        None,
    )
    assert chunks[-1]["system_fingerprint"] == "vllm-0.32.0-simulator"


def test_stream_text_matches_non_streamed(sim: Process) -> None:
    streamed = stream(sim.url, "/v1/chat/completions", {**CHAT, "max_tokens": 7, "stream": True})
    deltas = [json.loads(payload)["choices"][0]["delta"] for payload in streamed[:-1]]
    whole = httpx.post(f"{sim.url}/v1/chat/completions", json={**CHAT, "max_tokens": 7}).json()
    assert (
        "".join(delta.get("content", "") for delta in deltas)
        == (whole["choices"][0]["message"]["content"])
    )


def test_completion_stream_framing_with_continuous_usage(sim: Process) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    body = {**COMPLETION, "max_tokens": 3, "stream": True, "stream_options": options}
    payloads = stream(sim.url, "/v1/completions", body)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    assert len(chunks) == 4  # three tokens, the last one finishing, then usage: no role chunk
    assert all(chunk["object"] == "text_completion" for chunk in chunks)
    assert chunks[0]["id"].startswith("cmpl-")
    texts = [chunk["choices"][0]["text"] for chunk in chunks[:3]]
    assert all(text.startswith(" ") for text in texts)
    assert [chunk["usage"]["completion_tokens"] for chunk in chunks] == [1, 2, 3, 3]
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks[:3]] == [None, None, "length"]
    assert chunks[3]["choices"] == []
    assert chunks[3]["usage"] == {"prompt_tokens": 4, "total_tokens": 7, "completion_tokens": 3}


def test_continuous_usage_needs_include_usage(sim: Process) -> None:
    options = {"continuous_usage_stats": True}
    body = {**COMPLETION, "max_tokens": 2, "stream": True, "stream_options": options}
    payloads = stream(sim.url, "/v1/completions", body)
    assert all('"usage"' not in payload for payload in payloads)


def test_non_streamed_chat_shape(sim: Process) -> None:
    response = httpx.post(
        f"{sim.url}/v1/chat/completions",
        json={**CHAT, "max_tokens": 4},
        headers={"x-request-id": "abc123"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["id"] == "chatcmpl-abc123"
    assert body["object"] == "chat.completion"
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 4
    assert (choice["finish_reason"], choice["stop_reason"]) == ("length", None)
    assert body["usage"] == {
        "prompt_tokens": 5,
        "total_tokens": 9,
        "completion_tokens": 4,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }


def test_non_streamed_completion_uses_default_max_tokens(sim: Process) -> None:
    body = httpx.post(f"{sim.url}/v1/completions", json=COMPLETION).json()
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    [choice] = body["choices"]
    # Unlimited, the simulated model stops by itself: 15 words and an end-of-sequence token.
    assert len(choice["text"].split()) == 15
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 16
    assert body["usage"]["prompt_tokens"] == 4


def test_embeddings_float_and_base64_agree(sim: Process) -> None:
    url = f"{sim.url}/v1/embeddings"
    as_float = httpx.post(url, json={"model": MODEL, "input": ["hello world", "bye"]}).json()
    as_b64 = httpx.post(
        url, json={"model": MODEL, "input": ["hello world", "bye"], "encoding_format": "base64"}
    ).json()
    assert as_float["object"] == "list"
    assert as_float["id"].startswith("embd-")
    assert as_float["usage"] == {
        "prompt_tokens": 3,
        "total_tokens": 3,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }
    for plain, packed in zip(as_float["data"], as_b64["data"], strict=True):
        assert plain["object"] == "embedding"
        vector = plain["embedding"]
        assert len(vector) == 384
        assert math.isclose(sum(value * value for value in vector), 1.0, rel_tol=1e-5)
        decoded = struct.unpack("<384f", base64.b64decode(packed["embedding"]))
        assert list(decoded) == vector
    assert as_float["data"][0]["embedding"] != as_float["data"][1]["embedding"]


def test_openai_sdk_embeddings_and_stream(sim: Process) -> None:
    """The official SDK asks for base64 embeddings by default and parses the SSE stream."""
    with openai.OpenAI(base_url=f"{sim.url}/v1", api_key="unused", max_retries=0) as client:
        embedding = client.embeddings.create(model=MODEL, input="hello world")
        assert len(embedding.data[0].embedding) == 384
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=3,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


def test_deterministic_responses_are_byte_identical(deterministic_sim: Process) -> None:
    url = f"{deterministic_sim.url}/v1/chat/completions"
    body = {**CHAT, "max_tokens": 6}
    first = httpx.post(url, json=body, headers={"x-request-id": "one"}).content
    second = httpx.post(url, json=body, headers={"x-request-id": "two"}).content
    assert first == second
    assert json.loads(first)["id"] == "chatcmpl-sim"
    assert json.loads(first)["created"] == 1700000000
    streamed = [stream(deterministic_sim.url, "/v1/completions", {**COMPLETION, "stream": True})]
    streamed.append(
        stream(deterministic_sim.url, "/v1/completions", {**COMPLETION, "stream": True})
    )
    assert streamed[0] == streamed[1]


def test_fail_status_header(sim: Process) -> None:
    response = httpx.post(
        f"{sim.url}/v1/chat/completions", json=CHAT, headers={"x-sim-fail-status": "503"}
    )
    assert response.status_code == 503
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("ServiceUnavailableError", 503)


def test_drop_after_breaks_the_stream_after_n_chunks(sim: Process) -> None:
    body = {**CHAT, "max_tokens": 10, "stream": True}
    received = b""
    with (
        httpx.stream(
            "POST",
            f"{sim.url}/v1/chat/completions",
            json=body,
            headers={"x-sim-drop-after": "3"},
            timeout=10,
        ) as response,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        for chunk in response.iter_raw():
            received += chunk
    payloads = sse_payloads(received)
    assert len(payloads) == 4  # the role chunk and three content chunks, then nothing
    assert all('"content":" ' in payload for payload in payloads[1:])


def test_drop_after_sends_nothing_for_non_streamed(sim: Process) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{sim.url}/v1/completions", json=COMPLETION, headers={"x-sim-drop-after": "0"})


def test_stall_delays_the_first_byte(sim: Process) -> None:
    started = time.monotonic()
    response = httpx.post(
        f"{sim.url}/v1/completions", json=COMPLETION, headers={"x-sim-stall-ms": "300"}
    )
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3


def test_unguarded_routes_are_served_and_counted(sim: Process) -> None:
    before = metric(sim, "sim_http_requests_total", path="/tokenize")
    response = httpx.post(f"{sim.url}/tokenize", json={"prompt": "hi"})
    assert response.json() == {"sim_unguarded": True}
    assert metric(sim, "sim_http_requests_total", path="/tokenize") == before + 1


def finished(sim: Process) -> dict[str, float]:
    """vllm:request_success_total per finished_reason."""
    reasons = ("stop", "length", "abort", "error", "repetition")
    return {r: metric(sim, "vllm:request_success_total", finished_reason=r) for r in reasons}


NONE_FINISHED = dict.fromkeys(("stop", "length", "abort", "error", "repetition"), 0.0)


def test_stream_client_disconnect_aborts(module_tmp: Path) -> None:
    """What vLLM 0.32 shows for a client that left: the request stops running, its
    tokens so far are counted, and it is counted as finished under no reason."""
    with run_simulator(module_tmp, "--itl-ms", "100") as slow:
        body = {**CHAT, "max_tokens": 50, "stream": True}
        with httpx.stream("POST", f"{slow.url}/v1/chat/completions", json=body) as response:
            contents = 0
            for line in response.iter_lines():
                contents += '"content":" ' in line
                if contents == 3:
                    assert metric(slow, "vllm:num_requests_running") == 1
                    break  # closes the stream
        # Five seconds of tokens were left: only an abort frees the slot this soon.
        assert wait_for(slow, "vllm:num_requests_running", 0, 2.0) == 0
        assert 3 <= metric(slow, "vllm:generation_tokens_total") < 50
        assert finished(slow) == NONE_FINISHED


def test_waiting_client_disconnect_aborts(module_tmp: Path) -> None:
    with run_simulator(module_tmp, "--ttft-ms", "5000") as slow:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{slow.url}/v1/completions", json=COMPLETION, timeout=0.3)
        assert wait_for(slow, "vllm:num_requests_running", 0, 2.0) == 0
        assert metric(slow, "vllm:generation_tokens_total") == 0
        assert finished(slow) == NONE_FINISHED


def test_max_num_seqs_queues_the_rest(module_tmp: Path) -> None:
    with run_simulator(module_tmp, "--max-num-seqs", "1", "--ttft-ms", "600") as narrow:
        statuses: list[int] = []

        def call() -> None:
            response = httpx.post(f"{narrow.url}/v1/completions", json=COMPLETION, timeout=10)
            statuses.append(response.status_code)

        threads = [threading.Thread(target=call) for _ in range(2)]
        for thread in threads:
            thread.start()
        assert wait_for(narrow, "vllm:num_requests_waiting", 1, 2.0) == 1
        assert metric(narrow, "vllm:num_requests_running") == 1
        assert metric(narrow, "vllm:kv_cache_usage_perc") == 1.0
        for thread in threads:
            thread.join()
        assert statuses == [200, 200]
        assert metric(narrow, "vllm:num_requests_waiting") == 0
        assert metric(narrow, "vllm:request_success_total", finished_reason="stop") == 2
