"""Anthropic's Messages API through a real gateway, with the official `anthropic` SDK.

The gateway sits in front of the simulator through a recording TCP proxy, so
the tests see what the replica received; the simulator's own token counters
say what the engine generated.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest

from tests.fault_proxy import FaultProxy
from tests.servers import Process, free_port, gateway_config, metric, run_gateway, run_simulator

ADMIN_TOKEN = "admin-token-for-anthropic-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MODEL, SLOW = "sim-model", "slow-model"
CAP = 16
PROMPT = [{"role": "user", "content": "Name the capital of France"}]
# The simulator counts words: "Answer briefly." and the message, one prompt.
PROMPT_TOKENS = 2 + 5
MESSAGE = '{"model":"sim-model","messages":[{"role":"user","content":"hi"}],%s}'


@pytest.fixture(scope="module")
def recorder(sim: Process) -> Iterator[FaultProxy]:
    """Between the gateway and the simulator: every byte the replica received."""
    proxy = FaultProxy(sim.port)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def slow_sim(module_tmp: Path) -> Iterator[Process]:
    with run_simulator(module_tmp, "--itl-ms", "50", model=SLOW) as process:
        yield process


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, recorder: FaultProxy, slow_sim: Process) -> Iterator[Process]:
    models = {MODEL: [f"http://127.0.0.1:{recorder.port}"], SLOW: [slow_sim.url]}
    config = gateway_config(free_port(), models)
    config["admin"] = {"tokens": [ADMIN_TOKEN]}
    with run_gateway(module_tmp, config) as process:
        yield process


def new_key(gateway: Process, models: list[str] | None = None, **limits: object) -> tuple[str, str]:
    body = {"tenant": "acme", "name": "anthropic", "models": models, "limits": limits}
    response = httpx.post(f"{gateway.url}/admin/v1/keys", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()["key"], response.json()["id"]


def sdk(gateway: Process, key: str, *, bearer: bool = False) -> anthropic.Anthropic:
    """Anthropic's SDK sending KEY as `x-api-key`, as its releases do (this build's own
    `api_key` goes as `Authorization: Bearer`, which the gateway accepts too: BEARER)."""
    if bearer:
        return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    headers = {"X-Api-Key": key, "Authorization": anthropic.omit}
    return anthropic.Anthropic(
        base_url=gateway.url, api_key=key, default_headers=headers, max_retries=0
    )


def settled_usage(gateway: Process, key_id: str, requests: int) -> dict[str, int]:
    """The key's stored usage once REQUESTS answered requests are written (1 s batches)."""
    deadline = time.monotonic() + 15
    while True:
        response = httpx.get(f"{gateway.url}/admin/v1/keys/{key_id}/usage", headers=ADMIN)
        usage: dict[str, int] = response.json()["total"]
        if usage["requests"] >= requests:
            return usage
        assert time.monotonic() < deadline, usage
        time.sleep(0.2)


def generated(sim: Process) -> float:
    return metric(sim.url, "vllm:generation_tokens_total")


def post(gateway: Process, key: str, raw: str, path: str = "/v1/messages") -> httpx.Response:
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    headers["content-type"] = "application/json"
    return httpx.post(f"{gateway.url}{path}", content=raw, headers=headers, timeout=30)


def test_a_message_and_its_exact_usage(gateway: Process, recorder: FaultProxy) -> None:
    key, key_id = new_key(gateway)
    with sdk(gateway, key) as client:
        raw = client.messages.with_raw_response.create(
            model=MODEL, max_tokens=12, system="Answer briefly.", messages=PROMPT
        )
    message = raw.parse()
    sent = raw.http_request.headers
    assert sent["x-api-key"] == key and "authorization" not in sent
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text.strip()
    assert message.stop_reason == "max_tokens"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (PROMPT_TOKENS, 12)
    usage = settled_usage(gateway, key_id, 1)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (PROMPT_TOKENS, 12)
    assert usage["estimated_requests"] == 0
    # The client's credential never reached the replica, in either spelling.
    assert recorder.header_values(b"x-api-key") == []
    assert key.encode() not in bytes(recorder.forwarded)
    # Anthropic's own headers go on, like any other (vLLM 0.32 ignores them).
    assert recorder.header_values(b"anthropic-version")


def test_a_streamed_message_with_the_sdk_helper(gateway: Process) -> None:
    key, key_id = new_key(gateway)
    with sdk(gateway, key, bearer=True) as client:
        whole = client.messages.create(
            model=MODEL, max_tokens=9, system="Answer briefly.", messages=PROMPT
        )
        with client.messages.stream(
            model=MODEL, max_tokens=9, system="Answer briefly.", messages=PROMPT
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert text == whole.content[0].text  # type: ignore[union-attr]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (PROMPT_TOKENS, 9)
    assert final.stop_reason == "max_tokens"
    usage = settled_usage(gateway, key_id, 2)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (2 * PROMPT_TOKENS, 18)
    assert usage["estimated_requests"] == 0


def test_the_stream_is_vllm_s_bytes_unchanged(gateway: Process, sim: Process) -> None:
    key, _ = new_key(gateway)
    body = {"model": MODEL, "max_tokens": 3, "messages": PROMPT, "stream": True}
    headers = {"x-api-key": key}
    through = httpx.post(f"{gateway.url}/v1/messages", json=body, headers=headers, timeout=30)
    direct = httpx.post(f"{sim.url}/v1/messages", json=body, timeout=30)
    assert through.headers["content-type"].startswith("text/event-stream")

    # The same bytes but for the id, which vLLM derives from the request id it is given.
    assert re.sub(r'"id":"[^"]*"', "", through.text) == re.sub(r'"id":"[^"]*"', "", direct.text)
    kinds = [event.split("\n")[0] for event in through.text.split("\n\n") if event]
    assert kinds[0] == "event: message_start" and kinds[-1] == "event: message_stop"
    assert kinds.count("event: content_block_delta") == 3
    assert "[DONE]" not in through.text


def test_count_tokens_is_forwarded_and_not_billed(gateway: Process) -> None:
    key, key_id = new_key(gateway)
    before = count_requests(gateway)
    with sdk(gateway, key) as client:
        counted = client.messages.count_tokens(
            model=MODEL, system="Answer briefly.", messages=PROMPT
        )
        client.messages.create(model=MODEL, max_tokens=2, messages=PROMPT)
    assert counted.input_tokens == PROMPT_TOKENS
    assert count_requests(gateway) == before + 1
    usage = settled_usage(gateway, key_id, 1)
    # Only the message is billed: the count generated nothing.
    assert (usage["requests"], usage["completion_tokens"]) == (1, 2)


def count_requests(gateway: Process) -> float:
    return metric(gateway.url, "gateway_requests_total", route="/v1/messages/count_tokens")


def test_a_bad_key_is_an_authentication_error(gateway: Process) -> None:
    with (
        sdk(gateway, "vgw-not-a-real-key") as client,
        pytest.raises(anthropic.AuthenticationError) as caught,
    ):
        client.messages.create(model=MODEL, max_tokens=5, messages=PROMPT)
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Incorrect API key provided."},
    }


def test_a_model_the_key_may_not_use_does_not_exist(gateway: Process) -> None:
    key, _ = new_key(gateway, models=[SLOW])
    with sdk(gateway, key) as client, pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model=MODEL, max_tokens=5, messages=PROMPT)
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with sdk(gateway, key) as client, pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model=MODEL, messages=PROMPT)


def test_a_rate_limit_is_a_rate_limit_error_with_retry_after(gateway: Process) -> None:
    key, _ = new_key(gateway, requests_per_minute=1)
    with sdk(gateway, key) as client:
        client.messages.count_tokens(model=MODEL, messages=PROMPT)
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(model=MODEL, max_tokens=5, messages=PROMPT)
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_a_string_max_tokens_is_a_bad_request_naming_it(gateway: Process, sim: Process) -> None:
    key, _ = new_key(gateway)
    before = generated(sim)
    with sdk(gateway, key) as client, pytest.raises(anthropic.BadRequestError) as caught:
        # An explicit timeout: the SDK would otherwise compute one from max_tokens.
        client.messages.create(
            model=MODEL,
            max_tokens="4000",  # type: ignore[arg-type]
            messages=PROMPT,
            timeout=30,
        )
    error = caught.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error" and "max_tokens" in error["message"]
    assert generated(sim) == before


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ('"max_tokens":true', "max_tokens"),
        ('"max_tokens":2.5', "max_tokens"),
        ('"max_tokens":0', "max_tokens"),
        ('"max_tokens":2147483648', "max_tokens"),
        ('"stream":false', "max_tokens"),  # required in Anthropic's API
        ('"max_tokens":5,"stream":1', "stream"),
        ('"max_tokens":5,"system":7', "system"),
    ],
)
def test_lax_fields_are_refused(gateway: Process, sim: Process, fields: str, param: str) -> None:
    key, _ = new_key(gateway)
    before = generated(sim)
    response = post(gateway, key, MESSAGE % fields)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert f"'{param}'" in body["error"]["message"]
    assert generated(sim) == before


def test_an_integral_float_is_normalised_and_the_cap_holds_on_the_engine(
    gateway: Process, sim: Process
) -> None:
    key, key_id = new_key(gateway, max_tokens=CAP)
    before = generated(sim)
    response = post(gateway, key, MESSAGE % '"max_tokens":4000.0')
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["output_tokens"] == CAP
    assert generated(sim) == before + CAP
    streamed = post(gateway, key, MESSAGE % '"max_tokens":3.0,"stream":true')
    assert streamed.status_code == 200
    assert '"output_tokens":3}' in streamed.text
    assert generated(sim) == before + CAP + 3
    usage = settled_usage(gateway, key_id, 2)
    assert (usage["completion_tokens"], usage["estimated_requests"]) == (CAP + 3, 0)


def test_shed_load_is_an_overloaded_error(module_tmp: Path) -> None:
    load = {"scrape_interval": 0.2, "shed_waiting_above": 10, "shed_retry_after": 3}
    with run_simulator(module_tmp, "--report-waiting", "20") as busy:
        config = gateway_config(free_port(), {MODEL: [busy.url]}, upstreams={"load": load})
        with run_gateway(module_tmp, config) as gateway:
            key = gateway.api_key
            assert key is not None
            deadline = time.monotonic() + 10
            with sdk(gateway, key) as client:
                while True:
                    try:
                        client.messages.create(model=MODEL, max_tokens=2, messages=PROMPT)
                    except anthropic.APIStatusError as exc:
                        refused = exc
                        break
                    assert time.monotonic() < deadline  # until the first scrape saw the queue
                    time.sleep(0.1)
    assert refused.status_code == 503
    assert refused.response.headers["retry-after"] == "3"
    assert refused.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


def test_errors_before_routing_have_anthropic_s_shape(gateway: Process) -> None:
    response = httpx.get(f"{gateway.url}/v1/messages", timeout=10)
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"
    response = httpx.post(f"{gateway.url}/v1/messages", json={}, timeout=10)
    assert response.status_code == 401
    assert response.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": response.json()["error"]["message"]},
    }
    # Chat keeps OpenAI's shape.
    chat = httpx.post(f"{gateway.url}/v1/chat/completions", json={}, timeout=10)
    assert chat.status_code == 401 and chat.json()["error"]["type"] == "invalid_request_error"


def test_x_api_key_is_a_credential_only_on_anthropic_routes(gateway: Process) -> None:
    key, _ = new_key(gateway)
    chat = {"model": MODEL, "messages": PROMPT, "max_tokens": 2}
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", json=chat, headers={"x-api-key": key}, timeout=10
    )
    assert response.status_code == 401
    bearer = httpx.post(
        f"{gateway.url}/v1/messages",
        json={"model": MODEL, "messages": PROMPT, "max_tokens": 2},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert bearer.status_code == 200 and bearer.json()["usage"]["output_tokens"] == 2


def test_a_mid_stream_failure_ends_with_an_anthropic_error_event(gateway: Process) -> None:
    key, key_id = new_key(gateway)
    body = {"model": MODEL, "max_tokens": 10, "messages": PROMPT, "stream": True}
    headers = {"x-api-key": key, "x-sim-drop-after": "3"}
    response = httpx.post(f"{gateway.url}/v1/messages", json=body, headers=headers, timeout=30)
    events = [event for event in response.text.split("\n\n") if event]
    kind, data = events[-1].split("\n")
    assert kind == "event: error"
    error = json.loads(data.removeprefix("data: "))
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert "interrupted" in error["error"]["message"]
    assert sum(event.startswith("event: content_block_delta") for event in events) == 3
    # No message_delta came: the usage is unknown, so the reservation is charged.
    usage = settled_usage(gateway, key_id, 1)
    assert (usage["completion_tokens"], usage["estimated_requests"]) == (10, 1)


def test_a_client_that_leaves_mid_stream_frees_the_engine(
    gateway: Process, slow_sim: Process
) -> None:
    key, key_id = new_key(gateway)
    before = generated(slow_sim)
    with (
        sdk(gateway, key) as client,
        client.messages.stream(model=SLOW, max_tokens=200, messages=PROMPT) as stream,
    ):
        for event in stream:
            if event.type == "content_block_delta":
                break
    deadline = time.monotonic() + 10
    while metric(slow_sim.url, "vllm:num_requests_running") > 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert generated(slow_sim) - before < 100
    usage = settled_usage(gateway, key_id, 1)
    assert (usage["completion_tokens"], usage["estimated_requests"]) == (200, 1)
