"""Usage read from response bytes at its bounds: what strip mode holds and for how long,
events at the size limit, several choices, and a large body's tail window.

The sizes are written out (256 KiB, 1 MiB, 64 KiB, 4 KiB) rather than imported: they
are the memory and work the gateway promises per request, and a test that read them
from the module would move with them.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterable

import pytest

from gateway.proxy.usage_scan import BodyUsage, StreamUsage
from gateway.sim.protocol import SYSTEM_FINGERPRINT, Identity
from gateway.sim.requests import GenerationRequest
from gateway.sim.stream import DONE, SseFrames
from gateway.usage.records import TokenUsage

HELD_LIMIT = 256 << 10  # strip mode holds at most this much of a stream's finishing events
EVENT_LIMIT = 1 << 20  # a partial event longer than this is not vLLM's framing
BODY_WHOLE = 1 << 20  # a non-streamed body up to this size is parsed whole
BODY_WINDOW = 64 << 10  # past it, usage is looked for in this many last bytes
USAGE_OBJECT = 4096  # the longest usage object parsed in that window

IDENT = Identity("chatcmpl-edge", 1700000000, "sim-model")
FP = b',"system_fingerprint":"' + SYSTEM_FINGERPRINT.encode() + b'"'
USAGE = TokenUsage(prompt_tokens=7, completion_tokens=9)


def finishing(index: int, size: int, *, stamped: bool = False) -> bytes:
    """A chat chunk that finishes choice INDEX, SIZE bytes long as sent with
    include_usage (its text pads it); STAMPED: with the fingerprint vLLM gives it
    when there is no usage event."""
    head = b'data: {"id":"chatcmpl-edge","object":"chat.completion.chunk","created":1700000000,'
    head += b'"model":"sim-model","choices":[{"index":%d,"delta":{"content":"' % index
    tail = b'"},"logprobs":null,"finish_reason":"length","stop_reason":null}]'
    text = b"x" * (size - len(head) - len(tail) - 3)
    return head + text + tail + (FP if stamped else b"") + b"}\n\n"


def usage_event(*, fingerprint: bool = True, pad: int = 0) -> bytes:
    """The usage-only event; PAD spaces of JSON whitespace lengthen it."""
    payload = b'data: {"id":"chatcmpl-edge","choices":[],"usage":{"prompt_tokens":7,'
    payload += b'"total_tokens":16,"completion_tokens":9}' + (FP if fingerprint else b"")
    return payload + b" " * pad + b"}\n\n"


def run(pieces: Iterable[bytes], *, strip: bool) -> tuple[bytes, TokenUsage | None]:
    scan = StreamUsage(strip=strip)
    sent = b"".join(scan.feed(piece) for piece in pieces)
    return sent + scan.end(), scan.usage


def splits_in_two(body: bytes) -> Iterable[list[bytes]]:
    return ([body[:at], body[at:]] for at in range(len(body) + 1))


# Strip mode: what is held, and how much.


@pytest.mark.parametrize("size", [HELD_LIMIT, HELD_LIMIT + 1], ids=["at-limit", "over"])
def test_a_finishing_event_is_held_for_its_fingerprint_up_to_256_kib(size: int) -> None:
    event = finishing(0, size)
    assert len(event) == size
    scan = StreamUsage(strip=True)
    if size <= HELD_LIMIT:
        # Held, and sent when the usage event comes, with that event's fingerprint.
        assert scan.feed(event) == b""
        assert scan.feed(usage_event()) == finishing(0, size, stamped=True)
    else:
        # Past the bound it goes on at once, as it came, and stays without a fingerprint.
        assert scan.feed(event) == event
        assert scan.feed(usage_event()) == b""
    assert scan.feed(DONE) == DONE
    assert scan.end() == b""
    assert scan.usage == USAGE


def test_several_choices_hold_256_kib_in_all() -> None:
    """Two choices' finishing events of 160 KiB: only the first fits the bound."""
    first, second = finishing(0, 160 << 10), finishing(1, 160 << 10)
    scan = StreamUsage(strip=True)
    assert scan.feed(first) == b""
    assert scan.feed(second) == second
    assert scan.feed(usage_event() + DONE) == finishing(0, 160 << 10, stamped=True) + DONE
    assert scan.usage == USAGE


def two_choices(*, include_usage: bool) -> tuple[bytes, list[bytes]]:
    """A chat stream of n=2 as vLLM frames it: choice 0 (2 words) finishes while
    choice 1 (5 words) goes on. Also returns the two finishing events."""
    frames = []
    for index, words in enumerate([2, 5]):
        request = GenerationRequest(
            prompt_text="Two takes on usage, please",
            prompt_tokens=7,
            words=words,
            finish_reason="stop",
            stream=True,
            include_usage=include_usage,
            continuous_usage=False,
        )
        frames.append((SseFrames(IDENT, True, request, index, index), request.completion_tokens))
    events = [choice.role() for choice, _ in frames]
    finished = [choice.token(count - 1) for choice, count in frames]
    for position in range(max(count for _, count in frames)):
        events += [choice.token(position) for choice, count in frames if position < count]
    usage = frames[0][0].usage(sum(count for _, count in frames)) if include_usage else b""
    return b"".join(events) + usage + DONE, finished


def test_another_choices_chunks_flow_on_while_a_finished_choice_waits() -> None:
    body, _ = two_choices(include_usage=True)
    plain, finished = two_choices(include_usage=False)
    # What the client gets: every event of vLLM's stream without include_usage, but the
    # finishing events (fingerprint and all) moved to just before [DONE].
    rest = plain.removesuffix(DONE)
    for event in finished:
        rest = rest.replace(event, b"")
    wanted = rest + b"".join(finished) + DONE
    assert len(finished) == 2 and all(FP in event for event in finished)
    for pieces in [[body], *splits_in_two(body)]:
        assert run(pieces, strip=True) == (wanted, TokenUsage(7, 9)), pieces[0][-20:]
    # Read event by event: choice 0's finishing event waits, choice 1's tokens do not.
    _, (first, last) = two_choices(include_usage=True)
    events = [event + b"\n\n" for event in body.split(b"\n\n")[:-1]]
    scan = StreamUsage(strip=True)
    sent = [scan.feed(event) for event in events]
    after = events[events.index(first) + 1 : events.index(last)]
    assert after and sent[events.index(first)] == b""
    assert sent[events.index(first) + 1 : events.index(last)] == after


def test_a_usage_event_without_a_fingerprint_leaves_the_finishing_event_as_sent() -> None:
    event = finishing(0, 300)
    body = event + usage_event(fingerprint=False) + DONE
    for pieces in [[body], *splits_in_two(body)]:
        assert run(pieces, strip=True) == (event + DONE, USAGE)


def test_a_finishing_event_with_its_own_fingerprint_is_not_given_a_second() -> None:
    # Servers that put the fingerprint on every chunk already gave it one.
    event = finishing(0, 300, stamped=True)
    body = event + usage_event() + DONE
    for pieces in [[body], *splits_in_two(body)]:
        assert run(pieces, strip=True) == (event + DONE, USAGE)


@pytest.mark.parametrize("choices", [b"", b'"choices":null,', b'"choices":{},'])
def test_a_usage_event_without_a_choices_list_is_counted_and_passed(choices: bytes) -> None:
    """Only the usage-only event vLLM sends for include_usage (`"choices": []`) is the
    gateway's to remove; another server's usage event goes on as sent."""
    event = b'data: {"id":"x",' + choices + b'"usage":{"prompt_tokens":7,"completion_tokens":9}}'
    body = b'data: {"choices":[{"index":0,"text":"hi"}]}\n\n' + event + b"\n\n" + DONE
    for pieces in [[body], *splits_in_two(body)]:
        assert run(pieces, strip=True) == (body, USAGE)


def test_strip_mode_passes_reads_of_several_plain_events_without_copying() -> None:
    """The hot path: a read of whole events with neither usage nor a finish reason
    goes on as the very bytes object read, in strip mode as in observe mode."""
    body, _ = two_choices(include_usage=True)
    events = [event + b"\n\n" for event in body.split(b"\n\n")[:4]]
    for strip in [True, False]:
        scan = StreamUsage(strip=strip)
        for read in [b"".join(events[:2]), b"".join(events[2:])]:
            assert read.count(b"\n\n") == 2
            assert scan.feed(read) is read


# Events at the size limit, however the read before them ended.


@pytest.mark.parametrize("blank", [b"", b"\n\n", b"\n\r\n", b"\r\n\r\n"])
@pytest.mark.parametrize("strip", [False, True], ids=["observe", "strip"])
def test_an_event_of_1_mib_is_read_whole_after_a_blank_line(blank: bytes, strip: bool) -> None:
    """A usage event 1 MiB long before its blank line is still an event: counted, and
    stripped in strip mode, also when the read it starts in begins with a blank line."""
    event = usage_event(pad=EVENT_LIMIT - len(usage_event()) + 2)
    assert len(event) == EVENT_LIMIT + 2
    head = b"data: {}\n\n"  # an earlier event, so that the read after it starts clean
    pieces = [head, blank + event[:-2], b"\n\n", DONE]
    sent = head + blank + (b"" if strip else event) + DONE
    assert run(pieces, strip=strip) == (sent, USAGE)


@pytest.mark.parametrize("strip", [False, True], ids=["observe", "strip"])
def test_an_event_past_1_mib_is_passed_on_and_not_read(strip: bool) -> None:
    event = usage_event(pad=EVENT_LIMIT - len(usage_event()) + 3)
    pieces = [event[:-2], b"\n\n", DONE]
    assert run(pieces, strip=strip) == (event + DONE, None)


# Non-streamed bodies: read whole up to 1 MiB, then only their last 64 KiB.


def json_body(size: int, *, usage_at: int | None = None, usage: bytes = b"") -> bytes:
    """A JSON object of SIZE bytes: `usage` first, or (USAGE_AT) starting that many
    bytes before the end, padded by a string field."""
    usage = usage or b'{"prompt_tokens":5,"completion_tokens":2}'
    field = b'"usage":' + usage
    if usage_at is None:
        head, tail = b"{" + field + b',"data":"', b'"}'
    else:
        head, tail = b'{"data":"', b'",' + field + b',"pad":"'
        tail += b"y" * (usage_at - len(tail)) + b'"}'
    body = head + b"x" * (size - len(head) - len(tail)) + tail
    assert len(body) == size
    if usage_at is not None:
        assert body.index(b'"usage"') == size - usage_at
    return body


def read_body(body: bytes, piece: int) -> BodyUsage:
    reader = BodyUsage()
    for at in range(0, len(body), piece):
        reader.feed(body[at : at + piece])
    return reader


PIECES = [4099, 1 << 16, 1 << 20, 8 << 20]


@pytest.mark.parametrize("piece", PIECES)
def test_a_body_up_to_1_mib_is_read_whole_wherever_its_usage_is(piece: int) -> None:
    assert read_body(json_body(BODY_WHOLE), piece).usage() == TokenUsage(5, 2)
    # One byte more, and only the tail is read: a usage at the head is not found there.
    assert read_body(json_body(BODY_WHOLE + 1), piece).usage() is None


@pytest.mark.parametrize("piece", [*PIECES, 40000, 70000])
def test_a_large_bodys_usage_is_found_in_its_last_64_kib(piece: int) -> None:
    size = 3 * BODY_WHOLE + 12345
    inside = json_body(size, usage_at=BODY_WINDOW)
    assert read_body(inside, piece).usage() == TokenUsage(5, 2)
    # One byte further back the key is cut at the window's edge: looking further back
    # would cost more than 64 KiB of search per response.
    outside = json_body(size, usage_at=BODY_WINDOW + 1)
    assert read_body(outside, piece).usage() is None


def test_a_large_bodys_finish_reasons_are_those_in_its_last_64_kib() -> None:
    reason = b'"finish_reason":"length"'
    for at, found in [(BODY_WINDOW, ["length"]), (BODY_WINDOW + 1, [])]:
        body = b'{"data":"' + b"x" * (2 * BODY_WHOLE) + b'","choices":[{'
        body += reason + b"}]," + b'"pad":"' + b"y" * (at - len(reason) - 12) + b'"}'
        assert body.index(reason) == len(body) - at
        reasons: list[str] = []
        read_body(body, 1 << 16).usage(reasons)
        assert reasons == found


@pytest.mark.parametrize(
    ("length", "usage"),
    [(USAGE_OBJECT, TokenUsage(5, 2)), (USAGE_OBJECT + 1, None), (USAGE_OBJECT + 2, None)],
)
def test_a_usage_object_in_a_large_bodys_tail_is_parsed_up_to_4_kib(
    length: int, usage: TokenUsage | None
) -> None:
    """Each `"usage":` key in the tail costs at most one 4 KiB parse per brace."""
    head = b'{"prompt_tokens":5,"completion_tokens":2'
    value = head + b" " * (length - len(head) - 1) + b"}"
    assert len(value) == length and json.loads(value)["prompt_tokens"] == 5
    body = json_body(2 * BODY_WHOLE, usage_at=len(value) + 1000, usage=value)
    assert read_body(body, 1 << 16).usage() == usage


@pytest.mark.parametrize("piece", [4099, 64 << 10, 256 << 10])
def test_a_large_body_is_kept_to_its_last_64_kib_and_less_than_one_read(piece: int) -> None:
    """A 16 MiB body read in pieces holds the window and less than one piece more (the
    one that straddles its start): the rest is let go as it passes."""
    reader = BodyUsage()
    body = json_body(16 << 20, usage_at=BODY_WINDOW // 2)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for at in range(0, len(body), piece):
            reader.feed(body[at : at + piece])
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # The pieces' object headers and the deque fit in what the straddling piece leaves.
    assert BODY_WINDOW <= held < BODY_WINDOW + piece, held
    assert reader.usage() == TokenUsage(5, 2)
