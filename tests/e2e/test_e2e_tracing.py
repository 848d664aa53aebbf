"""Traces across the gateway and real vLLM: vLLM continues the gateway's trace.

vLLM is started with `--otlp-traces-endpoint` pointing at this test's OTLP
receiver, the gateway with tracing on pointing at the same one. vLLM's request
span must then be a child of the gateway's attempt span: same trace id, parent
= the span whose `traceparent` the gateway sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import API_KEY, CHAT_MODEL, Server, chat_replica
from tests.otlp_receiver import OTLPReceiver, ReceivedSpan, otlp_receiver
from tests.servers import Process, free_port, gateway_config, run_gateway
from tests.tracing_setup import FAST_EXPORT, SERVER, attempts, server_span


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def traced_vllm(
    tmp_path_factory: pytest.TempPathFactory, receiver: OTLPReceiver
) -> Iterator[Server]:
    """A chat vLLM of its own, exporting its traces over OTLP/HTTP to the receiver."""
    env = {
        # vLLM's exporter speaks gRPC unless told otherwise; the receiver is OTLP/HTTP.
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "vllm",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    logs = tmp_path_factory.mktemp("vllm-traced")
    with chat_replica(logs, "--otlp-traces-endpoint", receiver.endpoint, env=env) as server:
        yield server


@pytest.fixture(scope="module")
def traced_gateway(
    tmp_path_factory: pytest.TempPathFactory, receiver: OTLPReceiver, traced_vllm: Server
) -> Iterator[Process]:
    config = gateway_config(free_port(), {})
    replica = {"url": traced_vllm.url, "api_key": API_KEY}
    config["models"] = [{"name": CHAT_MODEL, "replicas": [replica]}]
    config["tracing"] = {"enabled": True, "endpoint": receiver.endpoint}
    tmp: Path = tmp_path_factory.mktemp("gateway-traced")
    with run_gateway(tmp, config, env=FAST_EXPORT) as process:
        yield process


def test_vllm_continues_the_gateways_trace(traced_gateway: Process, receiver: OTLPReceiver) -> None:
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    answer = httpx.post(
        f"{traced_gateway.url}/v1/chat/completions",
        json=body,
        headers=traced_gateway.auth,
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    request_id = answer.headers["x-request-id"]

    def vllm_spans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [span for span in spans if span.service == "vllm"]

    def arrived(spans: list[ReceivedSpan]) -> bool:
        ours = [s for s in spans if s.attributes.get("gateway.request_id") == request_id]
        return bool(ours) and any(s.trace_id == ours[0].trace_id for s in vllm_spans(spans))

    spans = receiver.wait_for(arrived, timeout=60)
    server = server_span(spans, request_id)
    assert server.kind == SERVER
    [attempt] = attempts(spans, server)
    [engine] = [span for span in vllm_spans(spans) if span.trace_id == server.trace_id]
    # vLLM's request span hangs under the gateway's attempt: one trace end to end.
    assert engine.parent_span_id == attempt.span_id
    assert engine.name == "llm_request"
    # The engine's request id is the one the gateway minted and logged for this request.
    assert request_id in str(engine.attributes["gen_ai.request.id"])
    completion_tokens = answer.json()["usage"]["completion_tokens"]
    assert engine.attributes["gen_ai.usage.completion_tokens"] == completion_tokens
    assert server.attributes["gen_ai.usage.output_tokens"] == completion_tokens
