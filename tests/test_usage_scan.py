"""Usage read from response bytes: streams split every way, bodies small and large."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass

import pytest

from gateway.errors import UpstreamUnreachable, stream_error_event
from gateway.proxy.usage_scan import BODY_LIMIT, MAX_EVENT, BodyUsage, StreamUsage
from gateway.sim.protocol import (
    SYSTEM_FINGERPRINT,
    Identity,
    chat_body,
    completion_body,
    embedding_body,
)
from gateway.sim.requests import GenerationRequest
from gateway.sim.stream import DONE, SseFrames
from gateway.usage.records import TokenUsage

PROMPT = "Tell me a short story about usage"
IDENT = Identity("chatcmpl-test", 1700000000, "sim-model")
FINGERPRINT = SYSTEM_FINGERPRINT.encode()


@dataclass(frozen=True)
class Stream:
    body: bytes
    usage_event: bytes  # b"" when the stream has none
    usage: TokenUsage | None
    # The same stream as vLLM sends it without include_usage: what strip mode must give.
    stripped: bytes


def render(
    *, chat: bool = True, words: int = 4, include_usage: bool = True, continuous: bool = False
) -> Stream:
    """A stream exactly as the simulator (vLLM 0.32 framing) sends it."""
    request = GenerationRequest(
        prompt_text=PROMPT,
        prompt_tokens=len(PROMPT.split()),
        words=words,
        finish_reason="stop",
        stream=True,
        include_usage=include_usage,
        continuous_usage=continuous,
    )
    frames = SseFrames(IDENT, chat, request)
    events = [frames.role()] if chat else []
    events += [frames.token(position) for position in range(request.completion_tokens)]
    usage_event = frames.usage(request.completion_tokens) if include_usage else b""
    usage = TokenUsage(request.prompt_tokens, request.completion_tokens)
    body = b"".join(events) + usage_event + DONE
    stripped = body
    if include_usage:
        stripped = render(chat=chat, words=words, include_usage=False, continuous=continuous).body
    return Stream(body, usage_event, usage if include_usage else None, stripped)


def run(pieces: Iterable[bytes], *, strip: bool) -> tuple[bytes, TokenUsage | None]:
    scan = StreamUsage(strip=strip)
    sent = b"".join(scan.feed(piece) for piece in pieces)
    return sent + scan.end(), scan.usage


def random_splits(data: bytes, count: int, seed: int) -> Iterable[list[bytes]]:
    rng = random.Random(seed)
    for _ in range(count):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 20)))
        bounds = [0, *cuts, len(data)]
        yield [data[a:b] for a, b in itertools.pairwise(bounds)]


def expected(stream: Stream, strip: bool) -> bytes:
    return stream.stripped if strip else stream.body


STREAMS = {
    "chat": render(),
    "completion": render(chat=False),
    "chat-continuous": render(continuous=True),
    "completion-continuous": render(chat=False, continuous=True),
    "no-usage": render(include_usage=False),
}


@pytest.mark.parametrize("strip", [False, True], ids=["observe", "strip"])
@pytest.mark.parametrize("name", list(STREAMS))
def test_every_split_in_two_gives_the_same_bytes_and_usage(name: str, strip: bool) -> None:
    stream = STREAMS[name]
    for offset in range(len(stream.body) + 1):
        pieces = [stream.body[:offset], stream.body[offset:]]
        assert run(pieces, strip=strip) == (expected(stream, strip), stream.usage), offset


@pytest.mark.parametrize("strip", [False, True], ids=["observe", "strip"])
@pytest.mark.parametrize("name", list(STREAMS))
def test_random_and_one_byte_reads_give_the_same_bytes_and_usage(name: str, strip: bool) -> None:
    stream = STREAMS[name]
    one_byte_reads = [stream.body[i : i + 1] for i in range(len(stream.body))]
    for pieces in [one_byte_reads, *random_splits(stream.body, 300, seed=len(name))]:
        assert run(pieces, strip=strip) == (expected(stream, strip), stream.usage)


def test_the_usage_numbers_are_the_simulators() -> None:
    stream = render(words=4)
    # 7 prompt words; 4 words and the end-of-sequence token.
    assert run([stream.body], strip=False)[1] == TokenUsage(prompt_tokens=7, completion_tokens=5)
    assert json.loads(stream.usage_event[6:])["usage"]["total_tokens"] == 12


def test_observe_mode_returns_each_read_itself() -> None:
    stream = render()
    scan = StreamUsage(strip=False)
    for piece in [stream.body[:100], stream.body[100:350], stream.body[350:]]:
        assert scan.feed(piece) is piece
    assert scan.end() == b""


def test_strip_mode_passes_whole_event_reads_without_copying() -> None:
    stream = render(continuous=True)
    scan = StreamUsage(strip=True)
    events = [event + b"\n\n" for event in stream.body.split(b"\n\n")[:-1]]
    assert events[-2] == stream.usage_event
    finishing = events[-3]
    for event in events[:-3]:
        assert scan.feed(event) is event
    # The finishing event waits for the usage event, which gives it its fingerprint.
    assert scan.feed(finishing) == b""
    stamped = scan.feed(stream.usage_event)
    assert stamped == stream.stripped.split(b"\n\n")[-3] + b"\n\n"
    assert stamped.removesuffix(b'"}\n\n').endswith(b',"system_fingerprint":"' + FINGERPRINT)
    assert scan.usage == stream.usage


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completion"])
def test_strip_removes_exactly_the_usage_only_event(chat: bool) -> None:
    stream = render(chat=chat, continuous=True)
    sent, _ = run([stream.body], strip=True)
    before = stream.body.split(b"\n\n")
    after = sent.split(b"\n\n")
    assert len(after) == len(before) - 1
    changed = [event for event in before if event not in after]
    # The usage event is gone, and the finishing event got the fingerprint back.
    assert changed == [before[-4], stream.usage_event[:-2]]
    assert b'"choices":[]' not in sent
    # The running usage of every other chunk is still there.
    assert sent.count(b'"usage"') == stream.body.count(b'"usage"') - 1 > 0
    assert sent.endswith(b"\n\n" + DONE)
    assert sent == stream.stripped


def test_continuous_usage_stats_the_last_usage_wins() -> None:
    stream = render(continuous=True)
    scan = StreamUsage(strip=False)
    role_and_first_token = b"\n\n".join(stream.body.split(b"\n\n")[:2]) + b"\n\n"
    scan.feed(role_and_first_token)
    assert scan.usage == TokenUsage(prompt_tokens=7, completion_tokens=1)
    scan.feed(stream.body[len(role_and_first_token) :])
    assert scan.usage == stream.usage == TokenUsage(prompt_tokens=7, completion_tokens=5)


def test_a_stream_that_ends_before_its_usage_event_releases_what_it_held() -> None:
    stream = render()
    body = stream.body[: stream.body.index(stream.usage_event)]
    for pieces in [[body], *random_splits(body, 50, seed=7)]:
        assert run(pieces, strip=True) == (body, None)


@pytest.mark.parametrize("strip", [False, True], ids=["observe", "strip"])
def test_an_error_event_passes_and_carries_no_usage(strip: bool) -> None:
    head = render(include_usage=False).body.removesuffix(DONE)
    # Quoted inside a JSON string, "usage" is escaped, so it is never taken for a key.
    error = stream_error_event(UpstreamUnreachable('lost while reading "usage": {}'))
    body = head + error
    for pieces in [[body], *random_splits(body, 50, seed=1)]:
        assert run(pieces, strip=strip) == (body, None)


@pytest.mark.parametrize(
    "event",
    [
        b'data: {"choices":[],"usage":{"prompt_tokens":3,\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":3}} trailing\n\n',
        b'data: ["usage"]\n\n',
        b'event: usage\ndata: {"choices":[],"usage":{"prompt_tokens":3}}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":3}}\ndata: {}\n\n',
        b': "usage" comment\n\n',
    ],
)
@pytest.mark.parametrize("strip", [False, True], ids=["observe", "strip"])
def test_malformed_usage_looking_events_pass_unchanged(event: bytes, strip: bool) -> None:
    body = render(include_usage=False).body.removesuffix(DONE) + event + DONE
    for pieces in [[body], *random_splits(body, 50, seed=2)]:
        assert run(pieces, strip=strip) == (body, None)


@pytest.mark.parametrize(
    "usage",
    [
        b'{"prompt_tokens":"6","completion_tokens":5}',
        b'{"prompt_tokens":6,"completion_tokens":true}',
        b'{"prompt_tokens":-1,"completion_tokens":5}',
        b'{"completion_tokens":5}',
        b"null",
        b"[6,5]",
    ],
)
def test_invalid_usage_values_are_ignored(usage: bytes) -> None:
    event = b'data: {"choices":[{"index":0}],"usage":' + usage + b"}\n\n"
    assert run([event, DONE], strip=False) == (event + DONE, None)


def test_a_usage_only_event_is_removed_even_with_invalid_numbers() -> None:
    event = b'data: {"choices":[],"usage":{"prompt_tokens":null}}\n\n'
    assert run([event, DONE], strip=True) == (DONE, None)


def test_data_without_a_space_and_no_done_after_the_usage_event() -> None:
    token = b'data:{"choices":[{"index":0,"text":" hi"}]}\n\n'
    usage = (
        b'data:{"choices":[],"usage":{"prompt_tokens":2,"total_tokens":3,"completion_tokens":1}}'
    )
    body = token + usage + b"\n\n"
    for pieces in [[body], *random_splits(body, 50, seed=3)]:
        assert run(pieces, strip=False) == (body, TokenUsage(2, 1))
        assert run(pieces, strip=True) == (token, TokenUsage(2, 1))


def test_only_the_first_usage_only_event_is_removed() -> None:
    stream = render()
    again = b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n'
    body = stream.body.removesuffix(DONE) + again + DONE
    wanted = stream.stripped.removesuffix(DONE) + again + DONE
    for pieces in [[body], *random_splits(body, 50, seed=6)]:
        assert run(pieces, strip=True) == (wanted, TokenUsage(1, 2))


@pytest.mark.parametrize("name", ["chat", "completion-continuous"])
def test_crlf_framing_is_read_and_kept_intact(name: str) -> None:
    stream = STREAMS[name]
    body = stream.body.replace(b"\n\n", b"\r\n\r\n")
    stripped = stream.stripped.replace(b"\n\n", b"\r\n\r\n")
    for pieces in [[body], *random_splits(body, 100, seed=4)]:
        assert run(pieces, strip=False) == (body, stream.usage)
        assert run(pieces, strip=True) == (stripped, stream.usage)


def test_an_event_cut_off_at_the_end_is_withheld_then_passed_and_not_counted() -> None:
    stream = render()
    body = stream.body.removesuffix(DONE)[:-2]  # the usage event, without its blank line
    scan = StreamUsage(strip=True)
    sent = scan.feed(body)
    # Held: the finishing event (waiting for the usage event) and the cut-off event.
    finishing = stream.body.split(b"\n\n")[-4] + b"\n\n"
    assert sent + finishing == stream.body.removesuffix(stream.usage_event + DONE)
    assert scan.usage is None
    assert sent + scan.end() == body
    assert scan.end() == b""


def test_a_stream_without_blank_lines_is_not_held_without_bound() -> None:
    scan = StreamUsage(strip=True)
    line = b'data: {"choices":[],"usage":{"prompt_tokens":1}}\n'
    pieces = [line * 4096] * (MAX_EVENT // len(line * 4096) + 2)
    sent = b"".join(scan.feed(piece) for piece in pieces)
    assert len(sent) > MAX_EVENT
    assert sent + scan.end() == b"".join(pieces)


# Non-streamed bodies.

CHAT_BODY = chat_body(IDENT, " the simulator", 6, 3, "stop")
COMPLETION_BODY = completion_body(IDENT, " the simulator", 7, 2, "length")
EMBEDDING_BODY = embedding_body(IDENT, [(0.25, -0.5), (1.0, 0.0)], 9, as_base64=False)


def read_body(pieces: Iterable[bytes], **bounds: int) -> TokenUsage | None:
    scan = BodyUsage(**bounds)
    for piece in pieces:
        scan.feed(piece)
    return scan.usage()


def pieces_of(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


@pytest.mark.parametrize(
    ("body", "usage"),
    [
        (CHAT_BODY, TokenUsage(6, 3)),
        (COMPLETION_BODY, TokenUsage(7, 2)),
        (EMBEDDING_BODY, TokenUsage(9, 0)),
        (
            b'{"object":"list","data":[],"usage":{"prompt_tokens":4,"total_tokens":4}}',
            TokenUsage(4, 0),
        ),
    ],
)
@pytest.mark.parametrize("size", [1, 7, 100, 1 << 20])
def test_body_usage_in_pieces(body: bytes, usage: TokenUsage, size: int) -> None:
    assert read_body(pieces_of(body, size)) == usage
    # The same body read through the large-body path (a tail of 400 bytes).
    assert read_body(pieces_of(body, size), limit=50, tail=400) == usage


def big_embedding_body(prompt_tokens: int) -> bytes:
    rng = random.Random(5)
    vectors = [tuple(rng.uniform(-1, 1) for _ in range(1024)) for _ in range(64)]
    return embedding_body(IDENT, vectors, prompt_tokens, as_base64=False)


@pytest.mark.parametrize("size", [1 << 16, 4099, 1 << 24])
def test_body_usage_of_an_embedding_body_over_the_limit(size: int) -> None:
    body = big_embedding_body(prompt_tokens=321)
    assert len(body) > BODY_LIMIT
    assert read_body(pieces_of(body, size)) == TokenUsage(321, 0)


def test_a_large_body_is_read_from_its_tail_only() -> None:
    # Not JSON as a whole: a whole-body parse would find nothing.
    body = b"[" * (2 * BODY_LIMIT) + b'"usage":{"prompt_tokens":8,"completion_tokens":1}}'
    assert read_body(pieces_of(body, 1 << 16)) == TokenUsage(8, 1)


def test_the_tail_search_takes_the_last_valid_usage_key() -> None:
    real = b'"usage":{"prompt_tokens":5,"completion_tokens":2,"details":{"cached":1}}'
    later = b',"note":"\\"usage\\":{\\"prompt_tokens\\":99}","params":{"usage" : null}}'
    nested = b'"meta":{"usage":{"prompt_tokens":1,"completion_tokens":1}},'
    body = b'{"data":"' + b"x" * (BODY_LIMIT + 10) + b'",' + nested + real + later
    assert json.loads(body)["usage"]["prompt_tokens"] == 5
    assert read_body(pieces_of(body, 1 << 16)) == TokenUsage(5, 2)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b'{"object":"list","data":[]}',
        b'{"error":{"message":"bad","type":"BadRequestError","param":null,"code":400}}',
        b'{"usage":null}',
        b'{"usage":{"prompt_tokens":1.5,"completion_tokens":0}}',
        CHAT_BODY[: CHAT_BODY.index(b'"usage"') + 30],
        b'["usage"]',
    ],
)
def test_bodies_without_valid_usage(body: bytes) -> None:
    assert read_body(pieces_of(body, 10) or [body]) is None
    assert read_body(pieces_of(body, 10) or [body], limit=5, tail=4096) is None


def test_a_large_body_without_usage() -> None:
    body = big_embedding_body(prompt_tokens=3).replace(b'"usage"', b'"other"')
    assert read_body(pieces_of(body, 1 << 16)) is None


@pytest.mark.parametrize("strip", [False, True], ids=["observe", "strip"])
@pytest.mark.parametrize("name", list(STREAMS))
def test_finish_reasons_are_read_once_however_the_stream_is_split(name: str, strip: bool) -> None:
    """A traced request's finish reasons: the one finishing event's, once, whatever the
    reads; the bytes sent are the same as without it."""
    stream = STREAMS[name]
    one_byte_reads = [stream.body[i : i + 1] for i in range(len(stream.body))]
    halves = [[stream.body[:at], stream.body[at:]] for at in range(len(stream.body) + 1)]
    for pieces in [[stream.body], one_byte_reads, *halves, *random_splits(stream.body, 50, 7)]:
        reasons: list[str] = []
        scan = StreamUsage(strip=strip, reasons=reasons)
        sent = b"".join(scan.feed(piece) for piece in pieces) + scan.end()
        assert (sent, reasons) == (expected(stream, strip), ["stop"])


def test_a_bodys_finish_reasons_are_its_choices() -> None:
    body = {"choices": [{"finish_reason": "length"}, {"finish_reason": "stop"}, {}], "usage": None}
    reader = BodyUsage()
    reader.feed(json.dumps(body).encode())
    reasons: list[str] = []
    reader.usage(reasons)
    assert reasons == ["length", "stop"]
