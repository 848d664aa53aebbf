"""Traces across retries, incoming trace context ignored, sampling, tracing off, settings."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.settings import SettingsError, load_settings
from tests.fault_proxy import FaultProxy
from tests.otlp_receiver import OTLPReceiver, otlp_receiver
from tests.servers import Process, free_port
from tests.tracing_setup import (
    STATUS_ERROR,
    attempts,
    chat,
    continues,
    has_request,
    recording_proxy,
    server_span,
    traced_gateway,
    tracing,
)

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture
def upstream(sim: Process) -> Iterator[FaultProxy]:
    with recording_proxy(sim) as proxy:
        yield proxy


def test_a_retry_is_two_attempt_spans_under_one_server_span(
    tmp_path: Path, receiver: OTLPReceiver, upstream: FaultProxy
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    live = f"http://127.0.0.1:{upstream.port}"
    # Health checks rarely: the dead replica stays in the pool, so picks alternate.
    upstreams = {"health": {"interval": 60, "unhealthy_threshold": 5}}
    with traced_gateway(
        tmp_path, [dead, live], tracing(receiver.endpoint), upstreams=upstreams
    ) as gateway:
        request_ids = []
        for _ in range(2):
            answer = chat(gateway)
            assert answer.status_code == 200
            request_ids.append(answer.headers["x-request-id"])
        spans = receiver.wait_for(lambda spans: all(has_request(r, 1)(spans) for r in request_ids))
        retried = [
            server_span(spans, r)
            for r in request_ids
            if len(attempts(spans, server_span(spans, r))) == 2
        ]
        assert retried  # the picks rotate: at least one request tried the dead replica first
        first, second = attempts(spans, retried[0])
    assert first.attributes["gateway.replica"] == dead
    assert first.attributes["gateway.outcome"] == first.attributes["error.type"] == "connect"
    assert first.status_code == STATUS_ERROR
    assert second.attributes["gateway.replica"] == live
    assert second.attributes["gateway.outcome"] == "ok"
    assert second.attributes["gateway.attempt"] == 2
    assert first.end_ns <= second.start_ns
    # The request succeeded on its second attempt, which is what the replica continued.
    assert retried[0].attributes["gateway.replica"] == live
    received = upstream.header_values(b"traceparent")
    assert any(continues(header, second) for header in received)
    # The dead replica's attempt never reached a replica: only the live one's ids arrived.
    assert not any(continues(header, first) for header in received)


def test_ignored_incoming_context_starts_a_new_trace(
    tmp_path: Path, receiver: OTLPReceiver, upstream: FaultProxy
) -> None:
    settings = tracing(receiver.endpoint, incoming="ignore")
    with traced_gateway(tmp_path, [f"http://127.0.0.1:{upstream.port}"], settings) as gateway:
        headers = {"traceparent": CLIENT_PARENT, "tracestate": "vendor=abc"}
        request_id = chat(gateway, headers=headers).headers["x-request-id"]
        spans = receiver.wait_for(has_request(request_id, children=1))
    server = server_span(spans, request_id)
    assert server.trace_id != CLIENT_TRACE
    assert server.parent_span_id == ""
    [attempt] = attempts(spans, server)
    # The caller's context is replaced, state and all.
    assert continues(upstream.header_values(b"traceparent")[-1], attempt)
    assert upstream.header_values(b"tracestate") == []


def test_unsampled_requests_export_nothing_but_still_propagate(
    tmp_path: Path, receiver: OTLPReceiver, upstream: FaultProxy
) -> None:
    settings = tracing(receiver.endpoint, sample_ratio=0.0)
    with traced_gateway(tmp_path, [f"http://127.0.0.1:{upstream.port}"], settings) as gateway:
        request_id = chat(gateway).headers["x-request-id"]
    # Stopped: the gateway flushed what it had on the way out.
    assert not any(s.attributes.get("gateway.request_id") == request_id for s in receiver.spans)
    [header] = upstream.header_values(b"traceparent")
    version, _, _, flags = header.decode().split("-")
    assert version == "00" and int(flags, 16) & 1 == 0


def test_spans_still_queued_are_flushed_at_shutdown(
    tmp_path: Path, receiver: OTLPReceiver, upstream: FaultProxy
) -> None:
    # Exported only every minute: what arrives was sent by the shutdown's flush.
    settings = tracing(receiver.endpoint)
    replicas = [f"http://127.0.0.1:{upstream.port}"]
    with traced_gateway(
        tmp_path, replicas, settings, env={"OTEL_BSP_SCHEDULE_DELAY": "60000"}
    ) as gw:
        request_id = chat(gw).headers["x-request-id"]
        assert not has_request(request_id)(receiver.spans)
    assert has_request(request_id, children=1)(receiver.spans)


def test_without_tracing_the_gateway_adds_no_trace_context(
    tmp_path: Path, upstream: FaultProxy
) -> None:
    with traced_gateway(tmp_path, [f"http://127.0.0.1:{upstream.port}"], None) as gateway:
        assert chat(gateway).status_code == 200
        assert upstream.header_values(b"traceparent") == []
        # A caller's own context passes as it always has.
        chat(gateway, headers={"traceparent": CLIENT_PARENT})
        assert upstream.header_values(b"traceparent") == [CLIENT_PARENT.encode()]
        assert "trace_id" not in gateway.log()


def test_without_tracing_opentelemetry_is_never_imported() -> None:
    """Nor the DNS resolver without DNS discovery, nor SkyPilot without its: what a
    gateway does not use costs it no memory."""
    script = (
        "import sys\n"
        "from gateway.app import create_app\n"
        "from gateway.settings import Settings\n"
        "create_app(Settings.model_validate({'auth': {'pepper': 'p' * 32}}))\n"
        "prefixes = ('opentelemetry', 'dns', 'sky')\n"
        "imported = [m for m in sys.modules if m.split('.')[0] in prefixes]\n"
        "assert not imported, imported\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


def test_tracing_over_grpc_without_its_exporter_names_the_extra(tmp_path: Path) -> None:
    environ = {"VGW_TRACING__ENABLED": "true", "VGW_TRACING__PROTOCOL": "grpc"}
    with pytest.raises(SettingsError, match=r"pip install 'vllm-gateway\[tracing-grpc\]'"):
        load_settings(None, environ)


def test_tracing_without_the_sdk_is_a_settings_error() -> None:
    # The packages made unimportable in a fresh interpreter, as if never installed.
    script = (
        "import sys\n"
        "sys.modules['opentelemetry.sdk'] = None\n"
        "from gateway.settings import SettingsError, load_settings\n"
        "try:\n"
        "    load_settings(None, {'VGW_TRACING__ENABLED': 'true'})\n"
        "except SettingsError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], check=True, timeout=60, capture_output=True, text=True
    )
    assert "tracing: " in done.stdout
    assert "pip install 'vllm-gateway[tracing]'" in done.stdout


def test_an_endpoint_must_be_an_http_url() -> None:
    with pytest.raises(SettingsError, match=r"tracing\.endpoint"):
        load_settings(None, {"VGW_TRACING__ENDPOINT": "collector:4318"})
