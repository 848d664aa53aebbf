"""What the tracing tests share: a traced gateway in front of a recording proxy, and lookups."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.fault_proxy import FaultProxy
from tests.otlp_receiver import ReceivedSpan
from tests.servers import Process, free_port, gateway_config, run_gateway

MODEL = "sim-model"
SERVER, CLIENT = 2, 3  # Span.SpanKind in the OTLP protobuf
STATUS_UNSET, STATUS_ERROR = 0, 2
# The collector's credential: it must reach the receiver and nothing else.
COLLECTOR_SECRET = "collector-credential-0f9e8d7c6b5a"
# Spans leave a traced gateway within a tenth of a second (the exporter's default is 5 s).
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


def tracing(endpoint: str, **fields: object) -> dict[str, object]:
    return {"enabled": True, "endpoint": endpoint, **fields}


@contextmanager
def recording_proxy(target: Process) -> Iterator[FaultProxy]:
    """A TCP proxy in front of TARGET that keeps every byte the gateway sent it."""
    proxy = FaultProxy(target.port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@contextmanager
def traced_gateway(
    tmp: Path,
    replicas: list[str],
    trace_settings: dict[str, object] | None,
    env: dict[str, str] | None = None,
    **extra: object,
) -> Iterator[Process]:
    config = gateway_config(free_port(), {MODEL: replicas}, **extra)
    if trace_settings is not None:
        config["tracing"] = trace_settings
    with run_gateway(tmp, config, env=FAST_EXPORT | (env or {})) as process:
        yield process


def chat(
    gateway: Process,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    **fields: object,
) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    auth = {"Authorization": f"Bearer {key}"} if key else gateway.auth
    url = f"{gateway.url}/v1/chat/completions"
    return httpx.post(url, json=body | fields, headers=auth | (headers or {}), timeout=30)


def server_span(spans: list[ReceivedSpan], request_id: str) -> ReceivedSpan:
    return next(
        span
        for span in spans
        if span.kind == SERVER and span.attributes.get("gateway.request_id") == request_id
    )


def has_request(request_id: str, children: int = 0):  # type: ignore[no-untyped-def]
    """A condition for `OTLPReceiver.wait_for`: the request's server span and CHILDREN
    client spans under it have arrived."""

    def found(spans: list[ReceivedSpan]) -> bool:
        servers = [s for s in spans if s.attributes.get("gateway.request_id") == request_id]
        if not servers:
            return False
        return len(attempts(spans, servers[0])) >= children

    return found


def attempts(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return sorted(
        (s for s in spans if s.kind == CLIENT and s.parent_span_id == parent.span_id),
        key=lambda span: span.attributes["gateway.attempt"],  # type: ignore[arg-type,return-value]
    )


def continues(header: bytes, span: ReceivedSpan) -> bool:
    """HEADER is a W3C traceparent naming SPAN, sampled (flags may add the random bit)."""
    version, trace_id, span_id, flags = header.decode().split("-")
    ids = (version, trace_id, span_id)
    return ids == ("00", span.trace_id, span.span_id) and int(flags, 16) & 1 == 1


def access_line(gateway: Process, request_id: str) -> dict[str, object]:
    """The access log line of REQUEST_ID (lines are written in batches: waits for it)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in gateway.log().splitlines():
            if line.startswith("{") and f'"request_id":"{request_id}"' in line:
                entry: dict[str, object] = json.loads(line)
                return entry
        time.sleep(0.05)
    raise AssertionError(f"no access log line for {request_id}")
