"""The simulator with several sequences per request: batched prompts, n > 1, best_of.

What is pinned here is vLLM 0.32's behaviour (see gateway/sim/parallel.py):
choice indexes `prompt * n + choice`, usage counting each prompt once and
every choice's tokens, and engine counters counting every sequence.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import Process, run_simulator
from tests.test_sim import metric, stream, wait_for

MODEL = "sim-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a short story"}]}
FINGERPRINT = "vllm-0.32.0-simulator"
# Prompts whose texts differ (their crc32 are not 0 or 1 apart modulo the 40 words).
PROMPTS = ["Once upon a time", "The quick brown fox jumps"]
TOKEN_PROMPTS = [[11, 12, 13], [21, 22]]


@pytest.fixture
def fresh_sim(tmp_path: Path) -> Iterator[Process]:
    """A simulator of its own, so its counters start at zero."""
    with run_simulator(tmp_path) as process:
        yield process


def counters(sim: Process) -> dict[str, float]:
    names = ("prompt_tokens_total", "generation_tokens_total")
    values = {name: metric(sim, f"vllm:{name}") for name in names}
    for reason in ("length", "stop", "abort"):
        values[reason] = metric(sim, "vllm:request_success_total", finished_reason=reason)
    return values


def events(payloads: list[str]) -> list[dict[str, Any]]:
    assert payloads[-1] == "[DONE]"
    return [json.loads(payload) for payload in payloads[:-1]]


def texts_by_index(chunks: list[dict[str, Any]], key: str) -> dict[int, str]:
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            part = choice["delta"].get("content", "") if key == "delta" else choice["text"]
            texts[choice["index"]] = texts.get(choice["index"], "") + part
    return texts


@pytest.mark.parametrize("prompts", [PROMPTS, TOKEN_PROMPTS], ids=["strings", "token-ids"])
@pytest.mark.parametrize("n", [1, 2])
def test_batched_completion(fresh_sim: Process, prompts: list[object], n: int) -> None:
    body = {"model": MODEL, "prompt": prompts, "n": n, "max_tokens": 3}
    response = httpx.post(f"{fresh_sim.url}/v1/completions", json=body)
    assert response.status_code == 200
    answer = response.json()
    choices = answer["choices"]
    assert [choice["index"] for choice in choices] == list(range(2 * n))
    assert all(choice["finish_reason"] == "length" for choice in choices)
    assert all(len(choice["text"].split()) == 3 for choice in choices)
    # Every choice has its own text: prompts differ, and so do choices of one prompt.
    assert len({choice["text"] for choice in choices}) == 2 * n
    prompt_tokens = [4, 5] if isinstance(prompts[0], str) else [3, 2]
    assert answer["usage"]["prompt_tokens"] == sum(prompt_tokens)
    assert answer["usage"]["completion_tokens"] == 3 * 2 * n
    assert answer["usage"]["total_tokens"] == sum(prompt_tokens) + 6 * n
    # Each prompt alone gets the text its choices got in the batch, as in vLLM.
    alone = httpx.post(f"{fresh_sim.url}/v1/completions", json={**body, "prompt": prompts[1]})
    assert [c["text"] for c in alone.json()["choices"]] == [c["text"] for c in choices[n:]]
    # The engine saw one request per prompt and choice (the two calls above together).
    assert counters(fresh_sim) == {
        "prompt_tokens_total": n * sum(prompt_tokens) + n * prompt_tokens[1],
        "generation_tokens_total": 3 * 3 * n,
        "length": 3 * n,
        "stop": 0,
        "abort": 0,
    }


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("n", [1, 2])
def test_batched_completion_stream(fresh_sim: Process, include_usage: bool, n: int) -> None:
    body: dict[str, object] = {
        "model": MODEL,
        "prompt": PROMPTS,
        "n": n,
        "max_tokens": 3,
        "stream": True,
    }
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    chunks = events(stream(fresh_sim.url, "/v1/completions", body))
    tokens = chunks[:-1] if include_usage else chunks
    assert all(len(chunk["choices"]) == 1 for chunk in tokens)
    indexes = [chunk["choices"][0]["index"] for chunk in tokens]
    # A step of the engine yields a token for every sequence, in index order.
    assert indexes == list(range(2 * n)) * 3
    finishing = [chunk for chunk in tokens if chunk["choices"][0]["finish_reason"] is not None]
    assert finishing == tokens[-2 * n :]
    assert all(chunk["choices"][0]["finish_reason"] == "length" for chunk in finishing)
    stamped = [chunk for chunk in chunks if "system_fingerprint" in chunk]
    if include_usage:
        # The fingerprint goes on the usage event alone, which counts each prompt once.
        assert stamped == [chunks[-1]]
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] == {
            "prompt_tokens": 9,
            "total_tokens": 9 + 6 * n,
            "completion_tokens": 6 * n,
        }
    else:
        assert stamped == finishing
        assert all(chunk["system_fingerprint"] == FINGERPRINT for chunk in stamped)
    streamed = texts_by_index(tokens, "text")
    plain = {key: value for key, value in body.items() if key != "stream_options"}
    whole = httpx.post(f"{fresh_sim.url}/v1/completions", json={**plain, "stream": False})
    assert streamed == {c["index"]: c["text"] for c in whole.json()["choices"]}
    assert counters(fresh_sim)["prompt_tokens_total"] == 2 * 9 * n


def test_continuous_usage_is_per_prompt_and_choice(sim: Process) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    body = {**CHAT, "n": 2, "max_tokens": 2, "stream": True, "stream_options": options}
    chunks = events(stream(sim.url, "/v1/chat/completions", body))
    # Chat sends one role event per choice first, then the choices' tokens step by step.
    assert [chunk["choices"][0]["delta"] for chunk in chunks[:2]] == [
        {"role": "assistant", "content": ""}
    ] * 2
    assert [chunk["choices"][0]["index"] for chunk in chunks[:6]] == [0, 1, 0, 1, 0, 1]
    assert [chunk["usage"]["completion_tokens"] for chunk in chunks[:6]] == [0, 0, 1, 1, 2, 2]
    assert all(chunk["usage"]["prompt_tokens"] == 5 for chunk in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize("streamed", [False, True])
def test_chat_with_two_choices(fresh_sim: Process, streamed: bool) -> None:
    body = {**CHAT, "n": 2, "stream": streamed}
    if streamed:
        chunks = events(stream(fresh_sim.url, "/v1/chat/completions", body))
        texts = texts_by_index(chunks, "delta")
        finishing = [chunk for chunk in chunks if chunk["choices"][0]["finish_reason"]]
        assert [chunk["choices"][0]["index"] for chunk in finishing] == [0, 1]
        assert all(chunk["choices"][0]["finish_reason"] == "stop" for chunk in finishing)
        assert all(chunk["system_fingerprint"] == FINGERPRINT for chunk in finishing)
    else:
        answer = httpx.post(f"{fresh_sim.url}/v1/chat/completions", json=body).json()
        texts = {c["index"]: c["message"]["content"] for c in answer["choices"]}
        assert [c["finish_reason"] for c in answer["choices"]] == ["stop", "stop"]
        # The prompt counts once; both choices' tokens (15 words and EOS each) count.
        assert answer["usage"]["prompt_tokens"] == 5
        assert answer["usage"]["completion_tokens"] == 32
    assert sorted(texts) == [0, 1]
    assert texts[0] != texts[1]
    assert all(len(text.split()) == 15 for text in texts.values())
    # Two child requests in the engine: the prompt prefilled twice, 32 tokens, two finished.
    assert counters(fresh_sim) == {
        "prompt_tokens_total": 10,
        "generation_tokens_total": 32,
        "length": 0,
        "stop": 2,
        "abort": 0,
    }


def test_lax_fields_are_read_as_vllm_reads_them(sim: Process) -> None:
    body = {"model": MODEL, "prompt": PROMPTS, "n": "2", "max_tokens": "3", "temperature": "0.7"}
    answer = httpx.post(f"{sim.url}/v1/completions", json=body).json()
    assert len(answer["choices"]) == 4
    assert answer["usage"]["completion_tokens"] == 12
    # Chat's n may be null (one choice); completions' may not.
    chat = httpx.post(f"{sim.url}/v1/chat/completions", json={**CHAT, "n": None, "max_tokens": 1})
    assert len(chat.json()["choices"]) == 1
    refused = httpx.post(f"{sim.url}/v1/completions", json={**body, "n": "two"})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "body.n"


@pytest.mark.parametrize("best_of", [3, 1, 0, "junk", None])
def test_best_of_is_ignored_as_vllm_does(fresh_sim: Process, best_of: object) -> None:
    """vLLM 0.32 has no best_of field: it is accepted whatever it is, and changes nothing."""
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4, "best_of": best_of}
    answer = httpx.post(f"{fresh_sim.url}/v1/completions", json=body)
    assert answer.status_code == 200
    assert len(answer.json()["choices"]) == 1
    assert answer.json()["usage"]["completion_tokens"] == 4
    chat = httpx.post(
        f"{fresh_sim.url}/v1/chat/completions", json={**CHAT, "max_tokens": 4, "best_of": best_of}
    )
    assert len(chat.json()["choices"]) == 1
    assert counters(fresh_sim)["generation_tokens_total"] == 8
    assert counters(fresh_sim)["length"] == 2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"n": 0}, "n must be at least 1, got 0."),
        ({"n": 2, "temperature": 0}, "n must be 1 when using greedy sampling, got 2."),
        (
            {"temperature": -1},
            "temperature must be non-negative, got -1.0. (parameter=temperature, value=-1.0)",
        ),
        (
            {"prompt": ["x"] * 1025},
            "prompt list length 1025 exceeds the maximum allowed count of 1024. To increase "
            "this limit, set the VLLM_MAX_COMPLETION_PROMPTS environment variable. "
            "(parameter=prompt)",
        ),
    ],
)
def test_sampling_checks_in_vllm_words(
    sim: Process, fields: dict[str, object], message: str
) -> None:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, **fields}
    response = httpx.post(f"{sim.url}/v1/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["message"]) == ("BadRequestError", message)


def test_each_prompt_gets_its_own_default_length(sim: Process) -> None:
    # Without max_tokens each prompt may use what is left of its own context.
    long_prompt = "word " * 4090
    body = {"model": MODEL, "prompt": ["short", long_prompt], "max_tokens": None}
    answer = httpx.post(f"{sim.url}/v1/completions", json=body).json()
    short, long = answer["choices"]
    assert (short["finish_reason"], len(short["text"].split())) == ("stop", 15)
    assert (long["finish_reason"], len(long["text"].split())) == ("length", 6)
    assert answer["usage"]["completion_tokens"] == 16 + 6


def test_dropped_batch_counts_no_success(fresh_sim: Process) -> None:
    body = {"model": MODEL, "prompt": PROMPTS, "n": 2, "max_tokens": 5, "stream": True}
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream(
            "POST",
            f"{fresh_sim.url}/v1/completions",
            json=body,
            headers={"x-sim-drop-after": "6"},
            timeout=10,
        ) as response,
    ):
        for _ in response.iter_raw():
            pass
    values = counters(fresh_sim)
    assert values["generation_tokens_total"] == 6
    assert (values["length"], values["abort"]) == (0, 0)


def test_client_leaving_aborts_every_sequence(module_tmp: Path) -> None:
    with run_simulator(module_tmp, "--itl-ms", "100") as slow:
        body = {**CHAT, "n": 3, "max_tokens": 50, "stream": True}
        with httpx.stream("POST", f"{slow.url}/v1/chat/completions", json=body) as response:
            for line in response.iter_lines():
                if '"content":" ' in line:
                    break
        # As in vLLM, the three aborted sequences stop running and none counts as finished.
        assert wait_for(slow, "vllm:num_requests_running", 0, 2.0) == 0
        assert metric(slow, "vllm:generation_tokens_total") < 150
        assert metric(slow, "vllm:request_success_total", finished_reason="abort") == 0
        assert metric(slow, "vllm:request_success_total", finished_reason="length") == 0


def test_a_group_waits_for_all_its_slots(module_tmp: Path) -> None:
    with run_simulator(module_tmp, "--max-num-seqs", "3", "--ttft-ms", "600") as narrow:
        statuses: list[int] = []

        def call() -> None:
            body = {"model": MODEL, "prompt": "hi", "n": 2, "max_tokens": 1}
            response = httpx.post(f"{narrow.url}/v1/completions", json=body, timeout=10)
            statuses.append(response.status_code)

        threads = [threading.Thread(target=call) for _ in range(2)]
        for thread in threads:
            thread.start()
        # The second request's two sequences wait together: one free slot is not enough.
        assert wait_for(narrow, "vllm:num_requests_waiting", 2, 2.0) == 2
        assert metric(narrow, "vllm:num_requests_running") == 2
        for thread in threads:
            thread.join()
        assert statuses == [200, 200]
        assert metric(narrow, "vllm:request_success_total", finished_reason="length") == 4


def test_more_sequences_than_the_batch_still_run(module_tmp: Path) -> None:
    with run_simulator(module_tmp, "--max-num-seqs", "2", "--ttft-ms", "300") as narrow:
        body = {"model": MODEL, "prompt": PROMPTS, "n": 2, "max_tokens": 1}
        # Four sequences on a batch of two run all at once on the whole batch.
        response = httpx.post(f"{narrow.url}/v1/completions", json=body, timeout=10)
        assert len(response.json()["choices"]) == 4
        assert metric(narrow, "vllm:request_success_total", finished_reason="length") == 4
        assert metric(narrow, "vllm:num_requests_running") == 0
