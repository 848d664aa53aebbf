"""Reading a Responses answer's id and usage as its bytes pass, whatever the reads."""

from __future__ import annotations

import json

import pytest

from gateway.proxy.responses_usage import ResponseWatch, response_usage
from gateway.usage.records import TokenUsage


def event(kind: str, response: dict[str, object], sequence: int) -> bytes:
    data = {"response": response, "sequence_number": sequence, "type": kind}
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def stream(terminal: str, status: str) -> bytes:
    start = {"id": "resp_abc", "status": "in_progress", "usage": None}
    end = {**start, "status": status, "usage": {"input_tokens": 11, "output_tokens": 4}}
    delta = b'event: response.output_text.delta\ndata: {"delta":" \\"usage\\"","type":"x"}\n\n'
    return (
        event("response.created", start, 0)
        + event("response.in_progress", start, 1)
        + delta
        + event(terminal, end, 3)
    )


@pytest.mark.parametrize(
    ("terminal", "status"),
    [
        ("response.completed", "completed"),
        ("response.completed", "incomplete"),
        ("response.incomplete", "incomplete"),
        ("response.failed", "failed"),
    ],
)
@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
@pytest.mark.parametrize("crlf", [False, True])
def test_the_terminal_event_gives_the_usage(
    terminal: str, status: str, size: int, crlf: bool
) -> None:
    data = stream(terminal, status)
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    watch = ResponseWatch()
    reasons: list[str] = []
    scanner = watch.stream(strip=False, reasons=reasons)
    sent = b"".join(scanner.feed(data[i : i + size]) for i in range(0, len(data), size))
    assert sent + scanner.end() == data  # every byte, unchanged
    assert scanner.usage == TokenUsage(11, 4)
    assert watch.id == "resp_abc"
    assert reasons == [status]


@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
def test_the_id_comes_from_a_created_event_that_carries_no_usage_field(size: int) -> None:
    # vLLM 0.32 sends `"usage": null` in it; an engine that leaves the field out
    # must not stop the id being remembered.
    start = {"id": "resp_bare", "status": "in_progress"}
    data = event("response.created", start, 0) + event("response.in_progress", start, 1)
    watch = ResponseWatch()
    scanner = watch.stream(strip=False)
    sent = b"".join(scanner.feed(data[i : i + size]) for i in range(0, len(data), size))
    assert sent + scanner.end() == data
    assert watch.id == "resp_bare"
    assert scanner.usage is None


def test_a_stream_without_its_terminal_event_has_no_usage() -> None:
    data = stream("response.completed", "completed")
    cut = data[: data.rindex(b"event: response.completed")]
    scanner = ResponseWatch().stream(strip=False)
    scanner.feed(cut)
    assert scanner.usage is None


@pytest.mark.parametrize(
    ("head", "found"),
    [
        (b'{"id":"resp_0f","created_at":1,', "resp_0f"),
        (b'{ "id" : "resp_x-Y",', "resp_x-Y"),
        (b'{"id":"../etc","created_at":1,', None),
        (b'{"object":"response","id":"resp_late",', None),
    ],
)
def test_a_body_s_id_comes_from_its_first_bytes(head: bytes, found: str | None) -> None:
    watch = ResponseWatch()
    body = watch.body()
    body.feed(head)
    assert watch.id == found
    body.feed(b'"usage":{"input_tokens":3,"output_tokens":2,"total_tokens":5}}')
    if head.endswith(b","):
        assert body.usage() == TokenUsage(3, 2)


@pytest.mark.parametrize(
    "usage",
    [None, {}, {"input_tokens": "3", "output_tokens": 2}, {"input_tokens": 3}, [3, 2]],
)
def test_usage_needs_both_counts(usage: object) -> None:
    assert response_usage(usage) is None
