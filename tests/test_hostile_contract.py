"""The request contract against a hostile client, through a real gateway and simulator.

The simulator reads fields with pydantic's lax rules, as vLLM does: a
`"max_tokens": "4000"` the gateway let through would be honoured. So every
test here checks what the engine itself produced (its own token counters)
against what the key was allowed and what the gateway charged.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.servers import Process, free_port, gateway_config, metric, run_gateway, run_simulator

ADMIN_TOKEN = "admin-token-for-contract-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MODEL, SLOW, SHORT = "sim-model", "slow-model", "short-model"
CAP = 32
GLOBAL_BATCH = 64


@pytest.fixture(scope="module")
def slow_sim(module_tmp: Path) -> Iterator[Process]:
    with run_simulator(module_tmp, "--itl-ms", "50", model=SLOW) as process:
        yield process


@pytest.fixture(scope="module")
def short_sim(module_tmp: Path) -> Iterator[Process]:
    """A short context, so a long prompt in a batch finishes long before a short one."""
    args = ("--itl-ms", "100", "--max-model-len", "64", "--default-max-tokens", "16")
    with run_simulator(module_tmp, *args, model=SHORT) as process:
        yield process


@pytest.fixture(scope="module")
def gateway(
    module_tmp: Path, sim: Process, slow_sim: Process, short_sim: Process
) -> Iterator[Process]:
    models = {MODEL: [sim.url], SLOW: [slow_sim.url], SHORT: [short_sim.url]}
    config = gateway_config(free_port(), models)
    config["admin"] = {"tokens": [ADMIN_TOKEN]}
    config["limits"] = {"max_batch": GLOBAL_BATCH, "tenants": {"small": {"max_batch": 2}}}
    # Conversation affinity reads the opening of every request: every hostile body here
    # goes through that reading too.
    config["upstreams"] = {"affinity": {"by": "conversation", "header": "x-session-id"}}
    with run_gateway(module_tmp, config) as process:
        yield process


def new_key(gateway: Process, tenant: str = "acme", **limits: object) -> tuple[str, str]:
    body = {"tenant": tenant, "name": "contract", "limits": limits}
    response = httpx.post(f"{gateway.url}/admin/v1/keys", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()["key"], response.json()["id"]


def post(gateway: Process, key: str, path: str, raw: str) -> httpx.Response:
    """RAW is sent as the body byte for byte, so `1e2` stays `1e2`."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return httpx.post(f"{gateway.url}{path}", content=raw, headers=headers, timeout=30)


def engine_tokens(sim: Process) -> tuple[float, float]:
    return (
        metric(sim.url, "vllm:prompt_tokens_total"),
        metric(sim.url, "vllm:generation_tokens_total"),
    )


def stored_usage(gateway: Process, key_id: str) -> dict[str, int]:
    response = httpx.get(f"{gateway.url}/admin/v1/keys/{key_id}/usage", headers=ADMIN)
    assert response.status_code == 200, response.text
    total: dict[str, int] = response.json()["total"]
    return total


def settled_usage(gateway: Process, key_id: str, requests: int) -> dict[str, int]:
    """The key's stored usage once REQUESTS answered requests are written (1 s batches)."""
    deadline = time.monotonic() + 15
    while (usage := stored_usage(gateway, key_id))["requests"] < requests:
        assert time.monotonic() < deadline, usage
        time.sleep(0.2)
    return usage


def assert_refused(response: httpx.Response, param: str, code: str = "invalid_request") -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)


CHAT = '{"model":"sim-model","messages":[{"role":"user","content":"hi"}],%s}'
COMPLETION = '{"model":"sim-model","prompt":"Say something long",%s}'


@pytest.mark.parametrize(
    ("template", "fields", "param"),
    [
        (COMPLETION, '"max_tokens":"4000"', "max_tokens"),
        (COMPLETION, '"max_tokens":"4000","stream":1', "max_tokens"),
        (COMPLETION, '"max_tokens":20,"stream":1', "stream"),
        (CHAT, '"stream":"true"', "stream"),
        (CHAT, '"n":"8"', "n"),
        (CHAT, '"n":0', "n"),
        (CHAT, '"max_tokens":true', "max_tokens"),
        (CHAT, '"max_tokens":2.5', "max_tokens"),
        (CHAT, '"max_completion_tokens":0', "max_completion_tokens"),
        (CHAT, '"max_completion_tokens":-1,"max_tokens":4000', "max_completion_tokens"),
        (CHAT, '"max_tokens":1e12', "max_tokens"),
        (CHAT, '"min_tokens":"4000"', "min_tokens"),
        (CHAT, '"stream":true,"stream_options":"yes"', "stream_options"),
        (
            CHAT,
            '"stream":true,"stream_options":{"include_usage":1}',
            "stream_options.include_usage",
        ),
        (COMPLETION, '"best_of":"4"', "best_of"),
        ('{"model":"sim-model","messages":"hi"}', "", "messages"),
        ('{"model":"sim-model","prompt":5}', "", "prompt"),
        ('{"model":"sim-model","prompt":[]}', "", "prompt"),
        ('{"model":"sim-model","prompt":["a",[1,2]]}', "", "prompt"),
        ('{"model":"sim-model","prompt":[1.0,2.0]}', "", "prompt"),
        ('{"model":"sim-model","input":{"text":"x"}}', "", "input"),
    ],
)
def test_lax_and_wrong_types_are_refused_naming_the_field(
    gateway: Process, sim: Process, template: str, fields: str, param: str
) -> None:
    key, _ = new_key(gateway, max_tokens=CAP)
    raw = template % fields if "%s" in template else template
    path = "/v1/embeddings" if '"input"' in raw else "/v1/completions"
    path = "/v1/chat/completions" if '"messages"' in raw else path
    before = engine_tokens(sim)
    assert_refused(post(gateway, key, path, raw), param)
    assert engine_tokens(sim) == before  # nothing reached the engine


@pytest.mark.parametrize("value", ["2000.0", "1e2", "4000"])
@pytest.mark.parametrize("stream", [False, True])
def test_integral_numbers_are_capped_as_integers(
    gateway: Process, sim: Process, value: str, stream: bool
) -> None:
    key, key_id = new_key(gateway, max_tokens=CAP)
    fields = f'"max_tokens":{value},"stream":{json.dumps(stream)}'
    before = engine_tokens(sim)
    response = post(gateway, key, "/v1/completions", COMPLETION % fields)
    assert response.status_code == 200, response.text
    generated = engine_tokens(sim)[1] - before[1]
    assert 0 < generated <= CAP
    usage = settled_usage(gateway, key_id, 1)
    assert usage["completion_tokens"] == generated  # counted, streamed or not
    assert usage["estimated_requests"] == 0


def test_a_zero_max_completion_tokens_cannot_fall_back_to_an_uncapped_max_tokens(
    gateway: Process, sim: Process
) -> None:
    key, _ = new_key(gateway, max_tokens=CAP)
    before = engine_tokens(sim)
    response = post(gateway, key, "/v1/chat/completions", CHAT % '"max_tokens":30.0')
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] <= CAP
    refused = post(
        gateway, key, "/v1/chat/completions", CHAT % '"max_completion_tokens":0,"max_tokens":4000'
    )
    assert_refused(refused, "max_completion_tokens")
    assert engine_tokens(sim)[1] - before[1] <= CAP


@pytest.mark.parametrize("stream", [False, True])
def test_every_prompt_and_choice_of_a_batch_is_capped_and_charged(
    gateway: Process, sim: Process, stream: bool
) -> None:
    key, key_id = new_key(gateway, max_tokens=CAP)
    body = {
        "model": MODEL,
        "prompt": ["one", "two two", "three three three"],
        "n": 2,
        "temperature": 1,
        "max_tokens": 4000,
        "stream": stream,
    }
    before = engine_tokens(sim)
    response = post(gateway, key, "/v1/completions", json.dumps(body))
    assert response.status_code == 200, response.text
    generated = engine_tokens(sim)[1] - before[1]
    assert generated == 6 * CAP  # each of the 6 sequences stops at the cap
    usage = settled_usage(gateway, key_id, 1)
    assert (usage["completion_tokens"], usage["estimated_requests"]) == (generated, 0)


def test_n_streams_flow_while_only_a_finishing_event_waits(
    gateway: Process, short_sim: Process
) -> None:
    """Prompt 0 fills the context after 4 tokens, prompt 1 runs on to 16: prompt 1's
    tokens reach the client while the engine still generates them; only the finishing
    events wait for the fingerprint, and come last, stamped."""
    key, _ = new_key(gateway)
    body = {"model": SHORT, "prompt": [list(range(1, 61)), [1, 2, 3, 4]], "stream": True}
    headers = {"Authorization": f"Bearer {key}"}
    seen_running = False
    events: list[dict[str, object]] = []
    with httpx.stream(
        "POST", f"{gateway.url}/v1/completions", json=body, headers=headers, timeout=30
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            events.append(json.loads(line.removeprefix("data: ")))
            second = [e for e in events if e["choices"][0]["index"] == 1]  # type: ignore[index]
            if len(second) == 8 and not seen_running:
                seen_running = metric(short_sim.url, "vllm:num_requests_running") > 0
    assert seen_running  # prompt 1's 8th token arrived before the engine was done
    finishing = [e for e in events if e["choices"][0]["finish_reason"]]  # type: ignore[index]
    assert [e["choices"][0]["index"] for e in finishing] == [0, 1]  # type: ignore[index]
    assert all("system_fingerprint" in e for e in finishing)
    assert events[-2:] == finishing
    assert all("usage" not in e or e["usage"] is None for e in events)


def test_the_reservation_counts_every_prompt_and_choice(gateway: Process) -> None:
    key, _ = new_key(gateway, tokens_per_minute=1_000_000)
    raw = '{"model":"sim-model","prompt":["a","b","c","d"],"max_tokens":300,"n":2,"best_of":3}'
    response = post(gateway, key, "/v1/completions", raw)
    remaining = int(response.headers["x-ratelimit-remaining-tokens"])
    # 4 prompts x max(n, best_of) = 12 sequences of up to 300 tokens each, plus the prompt.
    assert remaining <= 1_000_000 - 4 * 3 * 300


def test_a_batch_s_reservation_fills_the_tokens_per_minute(gateway: Process, sim: Process) -> None:
    key, _ = new_key(gateway, tokens_per_minute=2_000)
    before = engine_tokens(sim)
    batch = json.dumps({"model": MODEL, "prompt": ["a"] * 10, "max_tokens": 300})
    first = post(gateway, key, "/v1/completions", batch)
    second = post(gateway, key, "/v1/completions", batch)
    assert 429 in (first.status_code, second.status_code)
    # At most one batch ran: the window holds 2,000 tokens, one batch reserves 3,000.
    assert engine_tokens(sim)[1] - before[1] <= 10 * 300


@pytest.mark.parametrize(
    ("tenant", "limits", "path", "raw", "param"),
    [
        ("acme", {"max_batch": 4}, "/v1/completions", '{"model":"sim-model","prompt":'
         '["a","b","c","d","e"]}', "prompt"),
        ("acme", {"max_batch": 4}, "/v1/completions", '{"model":"sim-model","prompt":'
         '[[1,2],[3],[4],[5],[6]]}', "prompt"),
        ("acme", {"max_batch": 4}, "/v1/chat/completions", CHAT % '"n":5', "n"),
        ("acme", {"max_batch": 4}, "/v1/completions", COMPLETION % '"best_of":5', "n"),
        ("acme", {"max_batch": 4}, "/v1/embeddings", '{"model":"sim-model","input":'
         '["a","b","c","d","e"]}', "input"),
        ("small", {}, "/v1/completions", '{"model":"sim-model","prompt":["a","b","c"]}', "prompt"),
        ("acme", {}, "/v1/embeddings", json.dumps({"model": MODEL, "input": ["x"] * 65}), "input"),
    ],
    ids=["prompts", "token-prompts", "n", "best_of", "inputs", "tenant-default", "global"],
)  # fmt: skip
def test_batches_over_the_limit_are_refused(
    gateway: Process,
    sim: Process,
    tenant: str,
    limits: dict[str, int],
    path: str,
    raw: str,
    param: str,
) -> None:
    key, _ = new_key(gateway, tenant, **limits)
    before = engine_tokens(sim)
    response = post(gateway, key, path, raw)
    assert_refused(response, param, "batch_too_large")
    assert "at most" in response.json()["error"]["message"]
    assert engine_tokens(sim) == before


def test_a_key_s_own_batch_limit_wins_over_its_tenant_s(gateway: Process) -> None:
    key, _ = new_key(gateway, "small", max_batch=3)
    raw = '{"model":"sim-model","input":["a","b","c"]}'
    assert post(gateway, key, "/v1/embeddings", raw).status_code == 200


def test_an_answer_whose_usage_never_arrives_is_charged_its_reservation(
    gateway: Process, slow_sim: Process
) -> None:
    key, key_id = new_key(gateway)
    estimated = "gateway_usage_estimated_total"
    before = metric(gateway.url, estimated, model=SLOW)
    body = {
        "model": SLOW,
        "messages": [{"role": "user", "content": "Talk for a while"}],
        "max_tokens": 200,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=30
    ) as response:
        assert response.status_code == 200
        next(response.iter_bytes())  # the first chunk, then the client leaves
    usage = settled_usage(gateway, key_id, 1)
    assert usage["estimated_requests"] == 1
    # The whole reservation: every completion token it may have produced, and its prompt.
    assert usage["completion_tokens"] == 200
    assert usage["prompt_tokens"] >= 1
    assert metric(gateway.url, estimated, model=SLOW) == before + 1


def test_a_stream_the_client_never_reads_past_the_headers_is_charged(
    gateway: Process, slow_sim: Process
) -> None:
    key, key_id = new_key(gateway)
    body = json.dumps({"model": SLOW, "prompt": "x", "max_tokens": 100, "stream": True}).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(head + body)
        assert sock.recv(12).startswith(b"HTTP/1.1 200")
    usage = settled_usage(gateway, key_id, 1)
    assert (usage["completion_tokens"], usage["estimated_requests"]) == (100, 1)


@dataclass(frozen=True)
class HostileKey:
    key: str
    key_id: str
    # The engine's prompt and generation token counters before the random requests.
    before: tuple[float, float]


@pytest.fixture(scope="module")
def hostile_key(gateway: Process, sim: Process) -> HostileKey:
    key, key_id = new_key(gateway, max_tokens=CAP)
    return HostileKey(key, key_id, engine_tokens(sim))


# Values for the fields policy reads: right and wrong JSON types, edges and extremes.
_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=5000),
    st.sampled_from([2**31, 2**40, 1e2, 2000.0, 0.5, -1.0]),
    st.text(max_size=6),
    st.sampled_from(["4000", "8", "true", "1", " 12 "]),
    st.lists(st.integers(min_value=0, max_value=50), max_size=3),
    st.dictionaries(st.sampled_from(["include_usage", "continuous_usage_stats"]), st.booleans()),
)
_FIELDS = ["max_tokens", "max_completion_tokens", "n", "best_of", "min_tokens", "stream"]
_PROMPTS = st.one_of(
    st.text(min_size=1, max_size=20),
    st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=3),
    st.lists(st.integers(min_value=1, max_value=999), min_size=1, max_size=4),
    st.lists(st.lists(st.integers(1, 999), min_size=1, max_size=3), min_size=1, max_size=3),
    _ANY,
)


def _count(value: object) -> int | None:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value < 2**31:
        return value
    return None


def _prompts(prompt: object) -> int:
    if isinstance(prompt, list) and prompt and all(isinstance(p, str | list) for p in prompt):
        return len(prompt)
    return 1


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    route=st.sampled_from(["chat", "completions", "embeddings"]),
    values=st.fixed_dictionaries({}, optional=dict.fromkeys(_FIELDS, _ANY)),
    options=st.one_of(st.just({}), st.fixed_dictionaries({"stream_options": _ANY})),
    prompt=_PROMPTS,
    messages=st.one_of(
        st.none(),
        _ANY,
        st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": st.text()})),
    ),
)
def test_random_field_values_never_beat_the_cap_or_the_charge(
    gateway: Process,
    sim: Process,
    hostile_key: HostileKey,
    route: str,
    values: dict[str, object],
    options: dict[str, object],
    prompt: object,
    messages: object,
) -> None:
    key = hostile_key.key
    body: dict[str, object] = {"model": MODEL, **values, **options}
    chat = route == "chat"
    if chat:
        body["messages"] = messages if messages is not None else [{"role": "user", "content": "?"}]
    elif route == "completions":
        body["prompt"] = prompt
    else:
        body["input"] = prompt
        body["dimensions"] = values.get("n")
    path = f"/v1/{route}".replace("/chat", "/chat/completions")
    before = engine_tokens(sim)
    response = post(gateway, key, path, json.dumps(body))
    assert response.status_code < 500, response.text
    generated = engine_tokens(sim)[1] - before[1]
    if response.status_code != 200 or route == "embeddings":
        assert generated == 0
        return
    choices = max(_count(values.get("n")) or 1, _count(values.get("best_of")) or 1)
    sequences = (1 if chat else _prompts(prompt)) * choices
    assert generated <= CAP * sequences


def test_the_random_requests_were_routed_by_their_opening(gateway: Process) -> None:
    """Runs after the random requests (file order): those the gateway forwarded were
    picked by their affinity key, so the openings above, of every type, were read."""
    assert metric(gateway.url, "gateway_affinity_picks_total", pick="first") > 0


def test_what_the_random_requests_were_charged_covers_what_the_engine_did(
    gateway: Process, sim: Process, hostile_key: HostileKey
) -> None:
    """Runs after the random requests (file order): the key was charged at least every
    token the engine generated for it, however its fields were written.

    Prompts are billed as vLLM's usage bills them, once per prompt; the engine's
    prompt counter counts a prompt again for each of its `n` choices, so it is an
    upper bound there, and the two are equal when no random request had n > 1."""
    prompt, generated = (
        now - then for now, then in zip(engine_tokens(sim), hostile_key.before, strict=True)
    )
    assert generated > 0  # the random requests did reach the engine
    deadline = time.monotonic() + 15
    while (usage := stored_usage(gateway, hostile_key.key_id))["completion_tokens"] < generated:
        if time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert usage["completion_tokens"] >= generated
    assert 0 < usage["prompt_tokens"] <= prompt
    assert usage["estimated_requests"] == 0  # every answer's usage arrived
