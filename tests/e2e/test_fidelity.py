"""Simulator fidelity: the same requests sent to real vLLM and to the simulator, compared.

Values that differ by nature (ids, timestamps, generated text, token counts,
timings, the model path in `root`) are not compared. What is compared is
listed in `tests/e2e/fidelity.py`: RULES names every rule (each assertion
here names the one it checks) and FIELDS lists every field of every body and
chunk, in order. The one deliberate difference is EXEMPT: the simulator's
`/v1/models` says it is the simulator in `owned_by`. Requests the simulator
does not support on purpose (n > 1, stop strings, logprobs, tools, `bytes`
embeddings) are not sent.

The simulator is started with vLLM's `max_model_len`, read from vLLM's
`/v1/models`, so that limits and the messages quoting them can be compared.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import API_KEY, CHAT_MODEL, EMBED_MODEL, Server
from tests.e2e.fidelity import (
    EXEMPT,
    FIELDS,
    GATEWAY_METRICS,
    chunks_of,
    generating_events,
    is_compact_json,
    kinds,
    rule,
    shape,
    shape_differences,
    shapes_by_kind,
    sse_events,
    unlisted,
)
from tests.servers import run_simulator

SSE_TYPE = "text/event-stream; charset=utf-8"
JSON_TYPE = "application/json"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
YES = [{"role": "user", "content": "Reply with the single word yes"}]
ONCE = "Once upon a time"
# SmolLM2's chat template, already answered: the model ends the text at once.
ANSWERED = "<|im_start|>user\nSay yes<|im_end|>\n<|im_start|>assistant\nYes<|im_end|>"
USAGE = {"include_usage": True}
CONTINUOUS = {"include_usage": True, "continuous_usage_stats": True}

# name -> (path, body fields, finish_reason). Without max_tokens both sides stop on EOS.
GENERATIONS: dict[str, tuple[str, dict[str, object], str]] = {
    "chat-length": (CHAT, {"messages": YES, "max_tokens": 3}, "length"),
    "chat-length-usage": (
        CHAT,
        {"messages": YES, "max_tokens": 3, "stream_options": USAGE},
        "length",
    ),
    "chat-length-continuous": (
        CHAT,
        {"messages": YES, "max_tokens": 3, "stream_options": CONTINUOUS},
        "length",
    ),
    "chat-stop": (CHAT, {"messages": YES}, "stop"),
    "chat-stop-usage": (CHAT, {"messages": YES, "stream_options": USAGE}, "stop"),
    "completion-length": (COMPLETIONS, {"prompt": ONCE, "max_tokens": 3}, "length"),
    "completion-length-continuous": (
        COMPLETIONS,
        {"prompt": ONCE, "max_tokens": 3, "stream_options": CONTINUOUS},
        "length",
    ),
    "completion-stop": (COMPLETIONS, {"prompt": ANSWERED}, "stop"),
    "completion-stop-usage": (COMPLETIONS, {"prompt": ANSWERED, "stream_options": USAGE}, "stop"),
}
NON_STREAMED = ["chat-length", "chat-stop", "completion-length", "completion-stop"]
EMBEDDING_BODIES = {
    "float": {"input": ["hello world", "bye"]},
    "base64": {"input": "hello world", "encoding_format": "base64"},
}
ID_PREFIXES = {CHAT: "chatcmpl", COMPLETIONS: "cmpl", EMBEDDINGS: "embd"}
TABLES = {CHAT: "chat", COMPLETIONS: "completion", EMBEDDINGS: "embeddings"}


def check_listed(body: object, table: str, side: str) -> None:
    found = unlisted(body, FIELDS[table])
    assert not found, f"{rule('fields-listed')} ({side}, {table}): " + "; ".join(found)


@dataclass(frozen=True)
class ErrorCase:
    """A request both sides refuse; `exact` when the whole body must match, message included."""

    path: str
    content: bytes | dict[str, object]
    embed: bool = False
    exact: bool = True
    method: str = "POST"
    content_type: str = JSON_TYPE
    api_key: str | None = API_KEY


def error_cases() -> dict[str, ErrorCase]:
    one = {"model": CHAT_MODEL, "messages": YES, "max_tokens": 1}
    return {
        "unknown-model-chat": ErrorCase(CHAT, {**one, "model": "nope"}),
        "unknown-model-completion": ErrorCase(COMPLETIONS, {"model": "nope", "prompt": "x"}),
        "unknown-model-embedding": ErrorCase(EMBEDDINGS, {"model": "nope", "input": "x"}, True),
        "max-tokens-negative": ErrorCase(CHAT, {**one, "max_tokens": -1}),
        "max-tokens-over-context": ErrorCase(CHAT, {**one, "max_tokens": 100_000}),
        "max-tokens-fraction": ErrorCase(CHAT, {**one, "max_tokens": 1.5}),
        "stream-not-bool": ErrorCase(CHAT, {**one, "stream": "maybe"}),
        "stream-options-without-stream": ErrorCase(CHAT, {**one, "stream_options": USAGE}),
        "malformed-json": ErrorCase(CHAT, b"{not json"),
        "body-not-object": ErrorCase(CHAT, b"[1]"),
        "missing-messages": ErrorCase(CHAT, {"model": CHAT_MODEL}),
        "messages-not-list": ErrorCase(CHAT, {**one, "messages": "hi"}),
        "empty-messages": ErrorCase(CHAT, {**one, "messages": []}),
        "missing-prompt": ErrorCase(COMPLETIONS, {"model": CHAT_MODEL}),
        # vLLM lists one error per embedding request variant; the simulator names only one.
        "missing-input": ErrorCase(EMBEDDINGS, {"model": EMBED_MODEL}, True, exact=False),
        "wrong-content-type": ErrorCase(CHAT, one, content_type="text/plain"),
        "wrong-key": ErrorCase(CHAT, one, api_key="wrong"),
        "no-key": ErrorCase("/v1/models", b"", method="GET", api_key=None),
        "unknown-path": ErrorCase("/v1/nothing", b"", method="GET"),
        "wrong-method": ErrorCase(CHAT, b"", method="GET"),
    }


ERRORS = error_cases()


@contextmanager
def simulator(tmp_path: Path, real: Server) -> Iterator[Server]:
    """A simulator standing in for REAL: same model name, API key and context length."""
    [card] = httpx.get(f"{real.url}/v1/models", headers=real.headers, timeout=10).json()["data"]
    args = ("--api-key", API_KEY, "--max-model-len", str(card["max_model_len"]))
    with run_simulator(tmp_path, *args, model=real.model) as process:
        yield Server(process.url, real.model, API_KEY)


@pytest.fixture(scope="module")
def chat(module_tmp: Path, vllm_chat: Server) -> Iterator[tuple[Server, Server]]:
    """Real vLLM's chat server and a simulator standing in for it."""
    with simulator(module_tmp, vllm_chat) as sim:
        yield vllm_chat, sim


@pytest.fixture(scope="module")
def embed(module_tmp: Path, vllm_embed: Server) -> Iterator[tuple[Server, Server]]:
    with simulator(module_tmp, vllm_embed) as sim:
        yield vllm_embed, sim


def post(server: Server, path: str, body: dict[str, object]) -> httpx.Response:
    # Generous: vLLM on two CPU cores may be busy with another test's request.
    return httpx.post(f"{server.url}{path}", json=body, headers=server.headers, timeout=120)


def both(pair: tuple[Server, Server], path: str, body: dict[str, object]) -> list[httpx.Response]:
    return [post(server, path, {"model": server.model, **body}) for server in pair]


def check_generation_values(chunk: dict[str, object], path: str, model: str, side: str) -> None:
    assert str(chunk["id"]).split("-")[0] == ID_PREFIXES[path], f"{rule('id-prefix')} ({side})"
    assert chunk["model"] == model, f"{rule('object')} ({side})"
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        total = usage["prompt_tokens"] + usage["completion_tokens"]
        assert usage["total_tokens"] == total, f"{rule('usage-adds-up')} ({side})"


def fingerprint_version(value: object) -> str:
    assert isinstance(value, str), rule("fingerprint")
    return value.rsplit("-", 1)[0]


@pytest.mark.parametrize("case", list(GENERATIONS))
def test_stream(chat: tuple[Server, Server], case: str) -> None:
    path, fields, finish = GENERATIONS[case]
    responses = both(chat, path, {**fields, "temperature": 0, "stream": True})
    streams = []
    for side, response in zip(("vllm", "sim"), responses, strict=True):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == SSE_TYPE, f"{rule('content-type')} ({side})"
        payloads, broken = sse_events(response.content)
        assert not broken, [f"{rule(name)} ({side})" for name in broken]
        chunks = chunks_of(payloads)
        for chunk in chunks:
            check_generation_values(chunk, path, chat[0].model, side)
            check_listed(chunk, f"{TABLES[path]} chunk", side)
        streams.append(chunks)
    real, fake = streams
    assert kinds(fake) == kinds(real), f"{rule('stream-kinds')}: {case}"
    real_shapes, fake_shapes = shapes_by_kind(real), shapes_by_kind(fake)
    for kind, expected in real_shapes.items():
        found = shape_differences(expected, fake_shapes[kind], kind)
        assert not found, f"{rule('chunk-shape')}: {case}: " + "; ".join(found)
    compare_stream_values(real, fake, finish)


def compare_stream_values(
    real: list[dict[str, object]], fake: list[dict[str, object]], finish: str
) -> None:
    for chunks in (real, fake):
        choices = [chunk["choices"] for chunk in chunks]
        finishes = [c[0] for c in choices if isinstance(c, list) and c and c[0]["finish_reason"]]
        assert [(c["finish_reason"], c["stop_reason"]) for c in finishes] == [(finish, None)], rule(
            "finish-reason"
        )
    assert {chunk["object"] for chunk in fake} == {chunk["object"] for chunk in real}, rule(
        "object"
    )
    if kinds(real)[0] == "role":
        assert real[0]["choices"] == fake[0]["choices"], rule("role-delta")
    versions = [fingerprint_version(c.get("system_fingerprint")) for c in (real[-1], fake[-1])]
    assert versions[0] == versions[1], rule("fingerprint")
    compare_event_counts(real, fake)


def compare_event_counts(real: list[dict[str, object]], fake: list[dict[str, object]]) -> None:
    """Generating events per completion token, where the stream reports its usage: the
    gateway reads a stream's events, so the simulator must send as many as vLLM."""
    ratios = []
    for chunks in (real, fake):
        usage = chunks[-1].get("usage")
        if not isinstance(usage, dict):
            return
        tokens = usage["completion_tokens"]
        assert isinstance(tokens, int) and tokens > 0, rule("content-events")
        ratios.append(generating_events(chunks) / tokens)
    assert ratios[1] == ratios[0], f"{rule('content-events')}: {ratios}"


def check_json_response(response: httpx.Response, side: str) -> None:
    assert response.headers.get("content-type") == JSON_TYPE, f"{rule('content-type')} ({side})"
    framed = "content-length" in response.headers and is_compact_json(response.text)
    assert framed, f"{rule('json-framing')} ({side})"


def compare_bodies(real: httpx.Response, fake: httpx.Response, case: str, table: str) -> None:
    for side, response in (("vllm", real), ("sim", fake)):
        check_json_response(response, side)
        check_listed(response.json(), table, side)
    found = shape_differences(shape(real.json()), shape(fake.json()))
    assert not found, f"{rule('body-shape')}: {case}: " + "; ".join(found)


@pytest.mark.parametrize("case", NON_STREAMED)
def test_non_streamed(chat: tuple[Server, Server], case: str) -> None:
    path, fields, finish = GENERATIONS[case]
    real, fake = both(chat, path, {**fields, "temperature": 0})
    assert (real.status_code, fake.status_code) == (200, 200), (real.text, fake.text)
    compare_bodies(real, fake, case, TABLES[path])
    for side, body in (("vllm", real.json()), ("sim", fake.json())):
        check_generation_values(body, path, chat[0].model, side)
        [choice] = body["choices"]
        assert (choice["finish_reason"], choice["stop_reason"]) == (finish, None), (
            f"{rule('finish-reason')} ({side})"
        )
    assert fake.json()["object"] == real.json()["object"], rule("object")
    versions = [fingerprint_version(r.json()["system_fingerprint"]) for r in (real, fake)]
    assert versions[0] == versions[1], rule("fingerprint")


@pytest.mark.parametrize("case", list(EMBEDDING_BODIES))
def test_embeddings(embed: tuple[Server, Server], case: str) -> None:
    real, fake = both(embed, EMBEDDINGS, EMBEDDING_BODIES[case])
    assert (real.status_code, fake.status_code) == (200, 200), (real.text, fake.text)
    compare_bodies(real, fake, case, "embeddings")
    for side, body in (("vllm", real.json()), ("sim", fake.json())):
        check_generation_values(body, EMBEDDINGS, embed[0].model, side)
    objects = [(r.json()["object"], r.json()["data"][0]["object"]) for r in (real, fake)]
    assert objects[0] == objects[1], rule("object")


def send_error_case(server: Server, case: ErrorCase) -> httpx.Response:
    content = case.content
    if isinstance(content, dict):
        content = httpx.Request("POST", "/", json=content).content
    headers = {"content-type": case.content_type}
    if case.api_key is not None:
        headers["authorization"] = f"Bearer {case.api_key}"
    url = f"{server.url}{case.path}"
    return httpx.request(case.method, url, content=content or None, headers=headers, timeout=60)


@pytest.mark.parametrize("name", list(ERRORS))
def test_error(chat: tuple[Server, Server], embed: tuple[Server, Server], name: str) -> None:
    case = ERRORS[name]
    real, fake = (send_error_case(server, case) for server in (embed if case.embed else chat))
    assert fake.status_code == real.status_code, f"{rule('error-status')}: {name}"
    assert fake.headers.get("allow") == real.headers.get("allow"), f"{rule('error-status')}: {name}"
    compare_bodies(real, fake, name, "error")
    if case.exact:
        assert fake.json() == real.json(), f"{rule('error-message')}: {name}"
    errors = [r.json().get("error") for r in (real, fake)]
    if isinstance(errors[0], dict) and isinstance(errors[1], dict):
        fields = [{k: v for k, v in e.items() if k != "message"} for e in errors]
        assert fields[1] == fields[0], f"{rule('error-fields')}: {name}"
    else:
        assert errors[1] == errors[0], f"{rule('error-fields')}: {name}"


def comparable_card(card: dict[str, object]) -> dict[str, object]:
    """A /v1/models card without its ids, timestamps, root and EXEMPT values."""
    skipped = {"created", "root", *EXEMPT}
    kept = {key: value for key, value in card.items() if key not in skipped}
    permissions = card["permission"]
    assert isinstance(permissions, list)
    kept["permission"] = [
        {k: v for k, v in permission.items() if k not in ("id", "created")}
        for permission in permissions
    ]
    return kept


@pytest.mark.parametrize("which", ["chat", "embed"])
def test_models(request: pytest.FixtureRequest, which: str) -> None:
    pair: tuple[Server, Server] = request.getfixturevalue(which)
    real, fake = (httpx.get(f"{s.url}/v1/models", headers=s.headers, timeout=10) for s in pair)
    compare_bodies(real, fake, f"/v1/models ({which})", "models")
    [real_card], [fake_card] = real.json()["data"], fake.json()["data"]
    assert comparable_card(fake_card) == comparable_card(real_card), rule("models-values")
    assert real.json()["object"] == fake.json()["object"], rule("models-values")
    for key, (vllm_value, sim_value) in EXEMPT.items():
        assert (real_card[key], fake_card[key]) == (vllm_value, sim_value), f"EXEMPT {key}"


def test_health(chat: tuple[Server, Server]) -> None:
    real, fake = (httpx.get(f"{server.url}/health", timeout=10) for server in chat)
    assert (real.status_code, real.content) == (fake.status_code, fake.content) == (200, b""), rule(
        "health"
    )
    assert real.headers.get("content-type") == fake.headers.get("content-type"), rule(
        "content-type"
    )


def metric_outline(text: str) -> dict[str, dict[str, object]]:
    """Per family the gateway reads: its type, each sample's label names, buckets, reasons."""
    outline: dict[str, dict[str, object]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in GATEWAY_METRICS:
            continue
        labels: dict[str, list[str]] = {}
        for sample in family.samples:
            labels[sample.name] = sorted(set(labels.get(sample.name, [])) | set(sample.labels))
        outline[family.name] = {
            "type": family.type,
            "labels": labels,
            "buckets": {s.labels["le"] for s in family.samples if "le" in s.labels},
            "reasons": {s.labels.get("finished_reason") for s in family.samples} - {None},
        }
    return outline


@pytest.mark.parametrize("which", ["chat", "embed"])
def test_metrics(request: pytest.FixtureRequest, which: str) -> None:
    pair: tuple[Server, Server] = request.getfixturevalue(which)
    real, fake = (httpx.get(f"{server.url}/metrics", timeout=10) for server in pair)
    media = [r.headers["content-type"].split(";")[0] for r in (real, fake)]
    assert media == ["text/plain", "text/plain"], rule("content-type")
    expected, found = metric_outline(real.text), metric_outline(fake.text)
    assert sorted(expected) == sorted(GATEWAY_METRICS), f"vLLM lacks {rule('metric-families')}"
    for name in GATEWAY_METRICS:
        assert name in found, f"{rule('metric-families')}: {name}"
        for key, rule_name in (
            ("type", "metric-families"),
            ("labels", "metric-families"),
            ("buckets", "metric-buckets"),
            ("reasons", "metric-reasons"),
        ):
            assert found[name][key] == expected[name][key], f"{rule(rule_name)}: {name} {key}"


def engine_counters(server: Server) -> dict[str, float]:
    """The engine counters an abort may move: finished requests per reason, tokens, running."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vllm:request_success_total":
                name = f"finished {sample.labels['finished_reason']}"
            elif sample.name in ("vllm:generation_tokens_total", "vllm:num_requests_running"):
                name = sample.name
            else:
                continue
            values[name] = values.get(name, 0.0) + sample.value
    return values


def leave_a_stream(server: Server, max_tokens: int) -> tuple[dict[str, float], dict[str, float]]:
    """Read three events of a long stream, close it; the counters before and once idle."""
    before = engine_counters(server)
    body = {"model": server.model, "prompt": ONCE, "max_tokens": max_tokens, "stream": True}
    body["ignore_eos"] = True  # vLLM keeps generating; the simulator never stops early anyway
    # Paces the simulator like a slow engine; vLLM ignores the header.
    headers = {**server.headers, "x-sim-itl-ms": "50"}
    url = f"{server.url}{COMPLETIONS}"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=120) as reply:
        events = 0
        for line in reply.iter_lines():
            events += line.startswith("data: ")
            if events == 3:
                break  # closes the stream
    after = engine_counters(server)
    deadline = time.monotonic() + 30
    while after["vllm:num_requests_running"] and time.monotonic() < deadline:
        time.sleep(0.2)
        after = engine_counters(server)
    return before, after


def test_counters_after_an_abort(chat: tuple[Server, Server]) -> None:
    """Behaviour, not shape: what the gateway's disconnect handling can observe."""
    max_tokens = 1000
    deltas = []
    for side, server in zip(("vLLM", "simulator"), chat, strict=True):
        before, after = leave_a_stream(server, max_tokens)
        assert after["vllm:num_requests_running"] == 0, f"{rule('abort-counters')} ({side})"
        generated = after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
        assert 0 < generated < max_tokens, f"{rule('abort-counters')} ({side}): {generated}"
        finished = {k: after[k] - before.get(k, 0.0) for k in after if k.startswith("finished")}
        deltas.append(finished)
    real, fake = deltas
    assert fake == real, rule("abort-counters")
