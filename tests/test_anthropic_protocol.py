"""Anthropic's Messages protocol in the gateway: usage read in every split a network may
make, the request edits and caps, and the error shapes."""

from __future__ import annotations

import json

import pytest

from gateway.errors import InvalidRequest, UpstreamUnreachable
from gateway.proxy import anthropic
from gateway.proxy.anthropic_usage import MessagesStreamUsage, message_usage, messages_body_usage
from gateway.proxy.request_edit import TokenPolicy
from gateway.proxy.routes import Route
from gateway.usage.records import TokenUsage


def event(kind: str, payload: dict[str, object]) -> bytes:
    data = json.dumps({"type": kind, **payload}, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


START = event(
    "message_start",
    {"message": {"id": "m", "content": [], "usage": {"input_tokens": 7, "output_tokens": 0}}},
)
DELTA = event(
    "content_block_delta", {"delta": {"type": "text_delta", "text": " usage"}, "index": 0}
)
END = event(
    "message_delta",
    {"delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 4}},
)
STREAM = START + DELTA * 4 + END + event("message_stop", {})


@pytest.mark.parametrize("size", [1, 7, 64, len(STREAM)])
def test_stream_usage_in_any_split_with_the_bytes_unchanged(size: int) -> None:
    reasons: list[str] = []
    scanner = MessagesStreamUsage(reasons=reasons)
    sent = (
        b"".join(scanner.feed(STREAM[i : i + size]) for i in range(0, len(STREAM), size))
        + scanner.end()
    )
    assert sent == STREAM
    assert scanner.usage == TokenUsage(7, 4)
    assert reasons == ["max_tokens"]


def test_a_stream_cut_before_message_delta_has_no_usage() -> None:
    scanner = MessagesStreamUsage()
    scanner.feed(START + DELTA)
    assert scanner.usage is None


def test_message_delta_s_own_input_tokens_and_cached_tokens_count() -> None:
    scanner = MessagesStreamUsage()
    usage = {"input_tokens": 5, "cache_read_input_tokens": 3, "output_tokens": 2}
    scanner.feed(START.replace(b"\n", b"\r\n") + event("message_delta", {"usage": usage}))
    assert scanner.usage == TokenUsage(8, 2)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"input_tokens": 3, "output_tokens": 9}, TokenUsage(3, 9)),
        ({"input_tokens": "3", "output_tokens": 9}, None),
        ({"input_tokens": 3, "output_tokens": True}, None),
        ({"prompt_tokens": 3, "completion_tokens": 9}, None),
        (None, None),
    ],
)
def test_body_usage(usage: object, expected: TokenUsage | None) -> None:
    assert message_usage(usage) == expected
    body = json.dumps({"id": "m", "type": "message", "content": [], "usage": usage}).encode()
    reader = messages_body_usage()
    reader.feed(body[:10])
    reader.feed(body[10:])
    assert reader.usage() == expected


def test_error_shapes() -> None:
    assert json.loads(anthropic.error_body(529, "busy")) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "busy"},
    }
    kinds = {status: anthropic.error_type(status) for status in (400, 405, 502, 504)}
    assert kinds == {
        400: "invalid_request_error",
        405: "invalid_request_error",
        502: "api_error",
        504: "api_error",
    }
    raw = anthropic.stream_error_event(UpstreamUnreachable("lost"))
    kind, data = raw.decode().rstrip("\n").split("\n")
    assert kind == "event: error"
    assert json.loads(data.removeprefix("data: "))["error"] == {
        "type": "api_error",
        "message": "lost",
    }


BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":%d}'


def test_a_request_within_the_cap_goes_on_as_sent() -> None:
    body = BODY % 20
    edited = anthropic.edit_messages(
        Route.MESSAGES, json.loads(body), body, TokenPolicy(32, False, 1024)
    )
    assert edited.body is body
    assert (edited.completion_reserve, edited.billed) == (20, True)
    assert edited.prompt_estimate == len(body) // 4 + 1


def test_over_the_cap_is_clamped_or_refused() -> None:
    body = BODY % 4000
    clamped = anthropic.edit_messages(
        Route.MESSAGES, json.loads(body), body, TokenPolicy(32, False, 1024)
    )
    assert json.loads(clamped.body)["max_tokens"] == clamped.completion_reserve == 32
    with pytest.raises(InvalidRequest) as refused:
        anthropic.edit_messages(Route.MESSAGES, json.loads(body), body, TokenPolicy(32, True, 1024))
    assert refused.value.param == "max_tokens" and "4000" in refused.value.message


def test_a_token_count_reserves_its_prompt_only_and_is_not_billed() -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    edited = anthropic.edit_messages(
        Route.COUNT_TOKENS, json.loads(body), body, TokenPolicy(32, True, 1024)
    )
    assert (edited.completion_reserve, edited.billed, edited.body) == (0, False, body)
