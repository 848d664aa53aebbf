"""Traces of a real gateway process, received by a real OTLP/HTTP receiver.

The simulator is the upstream, behind a TCP proxy that records what the gateway
sent it, so each test also sees the `traceparent` the replica received.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.principal import Limits
from tests.fault_proxy import FaultProxy
from tests.otlp_receiver import OTLPReceiver, otlp_receiver
from tests.servers import TEST_PEPPER, Process, create_key
from tests.tracing_setup import (
    CLIENT,
    COLLECTOR_SECRET,
    MODEL,
    SERVER,
    STATUS_ERROR,
    STATUS_UNSET,
    access_line,
    attempts,
    chat,
    continues,
    has_request,
    recording_proxy,
    server_span,
    traced_gateway,
    tracing,
)

ITL_MS = 60


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def upstream(sim: Process) -> Iterator[FaultProxy]:
    with recording_proxy(sim) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def keys(module_tmp: Path) -> dict[str, str]:
    """A key store with an ordinary key and one limited to a request a minute."""
    auth = {"pepper": TEST_PEPPER, "key_store": {"sqlite_path": str(module_tmp / "keys.db")}}
    config: dict[str, object] = {"auth": auth}
    return {
        "auth": json.dumps(auth),
        "key": create_key(config),
        "limited": create_key(config, tenant="limited", limits=Limits(requests_per_minute=1)),
    }


@pytest.fixture(scope="module")
def gateway(
    module_tmp: Path, receiver: OTLPReceiver, upstream: FaultProxy, keys: dict[str, str]
) -> Iterator[Process]:
    headers = {"authorization": f"Bearer {COLLECTOR_SECRET}"}
    settings = tracing(receiver.endpoint, headers=headers)
    upstream_url = f"http://127.0.0.1:{upstream.port}"
    auth = json.loads(keys["auth"])
    with traced_gateway(module_tmp, [upstream_url], settings, auth=auth) as process:
        yield process


def stream_chat(gateway: Process, key: str) -> tuple[str, dict[str, int], float]:
    """A streamed chat: its request id, its usage, and when its last byte arrived."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {key}", "x-sim-itl-ms": str(ITL_MS)}
    usage: dict[str, int] = {}
    url = f"{gateway.url}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {") and '"usage"' in line:
                usage = json.loads(line[6:])["usage"] or usage
        ended = time.time_ns()
    return response.headers["x-request-id"], usage, ended


def test_a_streamed_chat_is_one_server_span_ending_after_its_stream(
    gateway: Process, receiver: OTLPReceiver, upstream: FaultProxy, keys: dict[str, str]
) -> None:
    request_id, usage, _ = stream_chat(gateway, keys["key"])
    spans = receiver.wait_for(has_request(request_id, children=1))
    server = server_span(spans, request_id)
    assert server.name == "POST /v1/chat/completions"
    assert server.service == "vllm-gateway"
    assert server.parent_span_id == ""
    attributes = server.attributes
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == "/v1/chat/completions"
    assert attributes["http.response.status_code"] == 200
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == MODEL
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] == 5
    assert attributes["gateway.tenant"] == "tests"
    assert attributes["gateway.replica"] == f"http://127.0.0.1:{upstream.port}"
    assert "gateway.key_id" not in attributes  # tracing.key_id is off
    assert server.status_code == STATUS_UNSET
    names = [name for name, _ in server.events]
    assert names == ["gateway.authenticated", "gateway.admitted", "gen_ai.first_token"]
    # The span ends with the stream: at least the inter-token gaps after the first token.
    first_token = server.event_time("gen_ai.first_token")
    assert server.start_ns < first_token < server.end_ns
    assert server.end_ns - first_token >= 3 * ITL_MS * 1_000_000
    [attempt] = attempts(spans, server)
    assert attempt.trace_id == server.trace_id
    assert attempt.name == f"chat {MODEL}"
    assert attempt.attributes["gateway.outcome"] == "ok"
    assert attempt.attributes["gateway.attempt"] == 1
    assert attempt.attributes["http.response.status_code"] == 200
    assert server.start_ns <= attempt.start_ns <= attempt.end_ns <= server.end_ns
    # The replica got the attempt span's context; the access log line names the trace.
    assert continues(upstream.header_values(b"traceparent")[-1], attempt)
    assert access_line(gateway, request_id)["trace_id"] == server.trace_id


def test_finish_reasons_are_the_ones_the_client_received(
    gateway: Process, receiver: OTLPReceiver, keys: dict[str, str]
) -> None:
    """Read from a JSON body, and from a stream whose usage event the gateway asked for
    and removed (n=2: one reason per choice), as the client saw them."""
    headers = {"Authorization": f"Bearer {keys['key']}"}
    url = f"{gateway.url}/v1/chat/completions"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    answer = httpx.post(url, json=body, headers=headers, timeout=30)
    assert answer.status_code == 200
    sent = tuple(choice["finish_reason"] for choice in answer.json()["choices"])
    streamed_reasons: list[str] = []
    streamed = body | {"stream": True, "n": 2}
    with httpx.stream("POST", url, json=streamed, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                assert "usage" not in event or event["usage"] is None  # the gateway's, removed
                streamed_reasons += [c["finish_reason"] for c in event["choices"]]
    received = tuple(reason for reason in streamed_reasons if reason)
    assert len(sent) == 1 and len(received) == 2
    for request_id, expected in (
        (answer.headers["x-request-id"], sent),
        (response.headers["x-request-id"], received),
    ):
        server = server_span(receiver.wait_for(has_request(request_id)), request_id)
        assert server.attributes["gen_ai.response.finish_reasons"] == expected


def test_a_rate_limit_refusal_carries_its_status_and_code(
    gateway: Process, receiver: OTLPReceiver, keys: dict[str, str]
) -> None:
    assert chat(gateway, keys["limited"]).status_code == 200
    refused = chat(gateway, keys["limited"])
    assert refused.status_code == 429
    request_id = refused.headers["x-request-id"]
    spans = receiver.wait_for(has_request(request_id))
    server = server_span(spans, request_id)
    assert server.attributes["http.response.status_code"] == 429
    assert server.attributes["error.type"] == "rate_limit_exceeded"
    assert server.attributes["gateway.tenant"] == "limited"
    # A refusal is the client's error, not the gateway's; nothing went upstream.
    assert server.status_code == STATUS_UNSET
    assert attempts(spans, server) == []
    assert [name for name, _ in server.events] == ["gateway.authenticated"]


def test_a_replica_error_marks_both_spans_as_errors(
    gateway: Process, receiver: OTLPReceiver, keys: dict[str, str]
) -> None:
    failed = chat(gateway, keys["key"], headers={"x-sim-fail-status": "500"})
    assert failed.status_code == 500
    request_id = failed.headers["x-request-id"]
    spans = receiver.wait_for(has_request(request_id, children=1))
    server = server_span(spans, request_id)
    assert server.status_code == STATUS_ERROR
    assert server.attributes["http.response.status_code"] == 500
    [attempt] = attempts(spans, server)
    assert attempt.status_code == STATUS_ERROR
    assert attempt.attributes["gateway.outcome"] == attempt.attributes["error.type"] == "status"


def test_a_callers_trace_is_continued(
    gateway: Process, receiver: OTLPReceiver, upstream: FaultProxy, keys: dict[str, str]
) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {"traceparent": f"00-{trace_id}-{parent_id}-01", "tracestate": "vendor=abc"}
    answer = chat(gateway, keys["key"], headers=headers)
    assert answer.status_code == 200
    request_id = answer.headers["x-request-id"]
    spans = receiver.wait_for(has_request(request_id, children=1))
    server = server_span(spans, request_id)
    assert (server.trace_id, server.parent_span_id) == (trace_id, parent_id)
    [attempt] = attempts(spans, server)
    assert continues(upstream.header_values(b"traceparent")[-1], attempt)
    # The caller's vendor state travels with its trace.
    assert upstream.header_values(b"tracestate")[-1] == b"vendor=abc"


@pytest.mark.parametrize(
    "traceparent",
    [
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # the invalid all-zero id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E473G-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-" + "a" * 4000,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\xe9",
    ],
    ids=["garbage", "zero-trace", "zero-parent", "not-hex", "bad-version", "huge", "latin-1"],
)
def test_a_malformed_caller_context_starts_a_trace_of_the_gateways_own(
    gateway: Process,
    receiver: OTLPReceiver,
    upstream: FaultProxy,
    keys: dict[str, str],
    traceparent: str,
) -> None:
    """With incoming contexts trusted, a caller's malformed one is dropped: the request
    is served, its span is a root of a new trace, and the replica gets the gateway's."""
    headers = {"traceparent": traceparent.encode("latin-1"), "tracestate": b"vendor=abc"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    answer = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {keys['key']}", **headers},
        timeout=30,
    )
    assert answer.status_code == 200
    request_id = answer.headers["x-request-id"]
    spans = receiver.wait_for(has_request(request_id, children=1))
    server = server_span(spans, request_id)
    assert server.parent_span_id == ""
    assert server.trace_id not in traceparent.lower()
    [attempt] = attempts(spans, server)
    assert continues(upstream.header_values(b"traceparent")[-1], attempt)


def test_no_secret_is_in_a_span_or_the_log(
    gateway: Process, receiver: OTLPReceiver, keys: dict[str, str]
) -> None:
    request_id = chat(gateway, keys["key"]).headers["x-request-id"]
    receiver.wait_for(has_request(request_id, children=1))
    secret_key = keys["key"]
    for span in receiver.spans:
        for value in span.attributes.values():
            assert secret_key not in str(value) and COLLECTOR_SECRET not in str(value)
            assert TEST_PEPPER not in str(value)
    # The collector's credential went with the exports, and nowhere else.
    assert receiver.export_headers[-1]["authorization"] == f"Bearer {COLLECTOR_SECRET}"
    assert COLLECTOR_SECRET not in gateway.log()
    assert secret_key not in gateway.log()


def test_spans_are_kinds_server_and_client(receiver: OTLPReceiver) -> None:
    assert {span.kind for span in receiver.spans} <= {SERVER, CLIENT}


def test_a_client_that_leaves_mid_stream_ends_its_span_once(
    gateway: Process, receiver: OTLPReceiver, keys: dict[str, str]
) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
    headers = {"Authorization": f"Bearer {keys['key']}", "x-sim-itl-ms": "200"}
    url = f"{gateway.url}/v1/chat/completions"
    with httpx.stream("POST", url, json=body | {"stream": True}, headers=headers) as response:
        request_id = response.headers["x-request-id"]
        next(response.iter_raw())  # the first chunk, then the client is gone
    spans = receiver.wait_for(
        lambda spans: any(
            s.attributes.get("gateway.request_id") == request_id
            and s.attributes.get("gateway.client_disconnected")
            for s in spans
        )
    )
    server = server_span(spans, request_id)
    assert server.status_code == STATUS_UNSET
    assert "gen_ai.usage.output_tokens" not in server.attributes
    [attempt] = attempts(spans, server)
    assert attempt.attributes["gateway.client_disconnected"] is True
    # Ended exactly once: one span per id, and no second end reported by the SDK.
    time.sleep(0.5)
    assert [s.span_id for s in receiver.spans].count(server.span_id) == 1
    assert "ended span" not in gateway.log()
