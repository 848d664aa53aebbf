"""Token usage read from a replica's response bytes as they pass through.

Bytes are never changed, with one permitted edit (DESIGN.md): when the gateway
itself asked vLLM for `stream_options.include_usage` and the client did not,
the single usage-only event (`"choices": []` with `usage`) is removed before
`data: [DONE]`. To remove it whole, that mode withholds a read's trailing
partial event until its blank line arrives; every other byte passes as sent.

vLLM puts `system_fingerprint` on the last event before `[DONE]`: without
`include_usage` on each event that finishes a choice, with it on the usage
event instead. So in that mode the finishing events are held until the usage
event comes (right after, for one choice), and its fingerprint is put back
where vLLM would have put it. With one choice the client gets the bytes it
would have had without `include_usage`; with n > 1 the other choices' events
flow on as they arrive, and each finishing event follows when the usage event
comes, just before `[DONE]`. At most MAX_HELD bytes are held: past that, a
finishing event passes at once, without the fingerprint.

A read of whole events costs one `endswith` and one `in`: only an event that
holds the bytes `"usage"` is parsed. A non-streamed body is parsed whole while
small; past BODY_LIMIT only the last `"usage":` of its tail is. JSON strings
cannot hold an unescaped quote, so those raw bytes are always a key.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from typing import TypeGuard

import orjson

from gateway.usage.records import TokenUsage

USAGE_KEY = b'"usage"'
# A finishing event: its reason is a string (raw quotes inside JSON strings are escaped).
FINISHED = b'"finish_reason":"'
FINGERPRINT = b'"system_fingerprint"'
# In every chunk of a choice (vLLM writes compact JSON); not in `[DONE]`, an error event
# or the usage event.
CHOICE = b'"choices":[{'
# A partial event this long is not vLLM's framing: pass it on rather than hold it.
MAX_EVENT = 1 << 20
MAX_HELD = 256 << 10
BODY_LIMIT = 1 << 20
BODY_TAIL = 64 << 10
MAX_USAGE_OBJECT = 4096

# An event ends at a blank line: vLLM writes "\n\n"; "\r\n\r\n" ends in "\n\r\n".
_EVENT_END = re.compile(rb"\n\r?\n")
_USAGE_VALUE = re.compile(rb'"usage"\s*:\s*')
# A choice's finish reason as vLLM writes it (compact JSON, no escapes in a reason).
_FINISH_REASON = re.compile(rb'"finish_reason":"([a-z_]{1,32})"')


class StreamUsage:
    """Watches an SSE stream's bytes as they pass.

    strip=False: bytes go on unchanged, as they arrive (`feed` returns its input).
    strip=True: the gateway added `include_usage` upstream, so the one usage-only
    event is removed; a read's trailing partial event is withheld until it completes.
    `usage` is the last valid usage seen: the final usage event's.
    With `reasons`, each finishing event's `finish_reason` is added to that list
    (a traced request's); otherwise no chunk is looked at for them.
    """

    def __init__(self, *, strip: bool, reasons: list[str] | None = None) -> None:
        self.usage: TokenUsage | None = None
        self.reasons = reasons
        self._strip = strip
        self._stripped = False
        self._fingerprint: object = None
        # Strip mode: finishing events held until the usage event.
        self._held: list[bytes] = []
        self._held_bytes = 0
        # The bytes after the last complete event: withheld (strip) or kept to scan (observe).
        self._partial = b""

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to send to the client now (may be b"")."""
        if not self._partial and chunk.endswith(b"\n\n"):
            # The usual read: whole events, most of them without usage.
            if self.reasons is not None and FINISHED in chunk:
                self.reasons += finish_reasons(chunk)
            if USAGE_KEY in chunk or (self._strip and (FINISHED in chunk or self._held)):
                return self._scan(chunk)
            return chunk
        data = self._partial + chunk
        cut = _events_end(data)
        whole, self._partial = data[:cut], data[cut:]
        if self.reasons is not None and FINISHED in whole:
            self.reasons += finish_reasons(whole)
        sent = self._scan(whole) if whole else b""
        if len(self._partial) > MAX_EVENT:
            if self._strip:
                sent += self._partial
            self._partial = b""
        return sent if self._strip else chunk

    def end(self) -> bytes:
        """At the end of the stream: the withheld bytes, to send before closing.

        An event cut off before its blank line is discarded by SSE clients, so
        its usage is not counted; in strip mode it is passed on as it came.
        """
        rest, self._partial = self._partial, b""
        if not self._strip:
            return b""
        # No usage event came: what was held goes out as it came.
        held, self._held = self._held, []
        return b"".join(held) + rest

    def _scan(self, events: bytes) -> bytes:
        """Reads the usage of complete EVENTS; returns them, less the one to strip."""
        if self._strip:
            return self._strip_events(events)
        start = 0
        removed: tuple[int, int] | None = None
        for match in _EVENT_END.finditer(events):
            end = match.start()
            if events.find(USAGE_KEY, start, end) >= 0 and self._read(events[start:end]):
                removed = (start, match.end())
            start = match.end()
        return events if removed is None else events[: removed[0]] + events[removed[1] :]

    def _strip_events(self, events: bytes) -> bytes:
        out: list[bytes] = []
        start = 0
        for match in _EVENT_END.finditer(events):
            event = events[start : match.end()]
            start = match.end()
            if USAGE_KEY in event and self._read(event):
                out.extend(_stamped(held, self._fingerprint) for held in self._held)
                self._held = []
            elif (
                not self._stripped
                and FINISHED in event
                and self._held_bytes + len(event) <= MAX_HELD
            ):
                self._held.append(event)
                self._held_bytes += len(event)
            elif self._held and CHOICE not in event:
                # Not another choice's chunk (`[DONE]`, an error event, ...), and no usage
                # event came: what was held goes out as it came, before it.
                out.extend(self._held)
                out.append(event)
                self._held = []
            else:
                out.append(event)
        return out[0] if len(out) == 1 else b"".join(out)

    def _read(self, event: bytes) -> bool:
        """Takes the usage of one event; True if it is the usage-only event to remove."""
        payload = _data(event)
        if payload is None:
            return False
        usage = payload.get("usage")
        found = usage_of(usage)
        if found is not None:
            self.usage = found
        if not self._strip or self._stripped:
            return False
        self._stripped = payload.get("choices") == [] and isinstance(usage, dict)
        if self._stripped:
            self._fingerprint = payload.get("system_fingerprint")
        return self._stripped


class BodyUsage:
    """Reads `usage` from a non-streamed JSON body (chat, completion, embeddings) fed in pieces.

    Up to LIMIT bytes are kept and parsed whole; past it, only the last TAIL
    bytes are kept, and the usage object is found in them. READER turns a
    `usage` value into token counts (OpenAI's field names by default).
    """

    def __init__(
        self,
        *,
        limit: int = BODY_LIMIT,
        tail: int = BODY_TAIL,
        reader: Callable[[object], TokenUsage | None] | None = None,
    ) -> None:
        self._pieces: deque[bytes] = deque()
        self._kept = 0
        self._big = False
        self._limit = limit
        self._tail = tail
        self._read = reader or usage_of

    def feed(self, chunk: bytes) -> None:
        pieces = self._pieces
        pieces.append(chunk)
        self._kept += len(chunk)
        self._big = self._big or self._kept > self._limit
        if self._big:
            while len(pieces) > 1 and self._kept - len(pieces[0]) >= self._tail:
                self._kept -= len(pieces.popleft())

    def usage(self, reasons: list[str] | None = None) -> TokenUsage | None:
        """The body's usage; with `reasons`, its choices' finish reasons go in that list."""
        body = b"".join(self._pieces)
        if self._big:
            if reasons is not None:
                reasons += finish_reasons(body[-self._tail :])
            return _usage_in_tail(body[-self._tail :], self._read)
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(value, dict):
            return None
        if reasons is not None and isinstance(choices := value.get("choices"), list):
            reasons += [
                choice["finish_reason"]
                for choice in choices
                if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str)
            ]
        return self._read(value.get("usage"))


def finish_reasons(events: bytes) -> list[str]:
    """The finish reasons written in EVENTS (whole SSE events or a JSON body's tail)."""
    return [reason.decode() for reason in _FINISH_REASON.findall(events)]


def _stamped(event: bytes, fingerprint: object) -> bytes:
    """EVENT with the fingerprint vLLM gives a finishing event when there is no usage event:
    the last field, so it goes just before the object's closing brace."""
    if fingerprint is None or FINISHED not in event or FINGERPRINT in event:
        return event
    body = event.rstrip(b"\r\n")
    if not body.endswith(b"}"):
        return event
    field = b"," + FINGERPRINT + b":" + orjson.dumps(fingerprint)
    return body[:-1] + field + b"}" + event[len(body) :]


def _events_end(data: bytes) -> int:
    """The offset just past the last blank line in DATA, 0 if there is none."""
    lf = data.rfind(b"\n\n")
    crlf = data.rfind(b"\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 3 if crlf >= 0 else 0)


def _data(event: bytes) -> dict[str, object] | None:
    """The JSON object of a one-line `data:` event, None for anything else."""
    line = event.strip()
    if not line.startswith(b"data:"):
        return None
    try:
        value = orjson.loads(line[5:])
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def usage_of(value: object) -> TokenUsage | None:
    if not isinstance(value, dict):
        return None
    prompt = value.get("prompt_tokens")
    # Embeddings usage may leave out completion_tokens.
    completion = value.get("completion_tokens", 0)
    if is_count(prompt) and is_count(completion):
        return TokenUsage(prompt, completion)
    return None


def is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _usage_in_tail(tail: bytes, read: Callable[[object], TokenUsage | None]) -> TokenUsage | None:
    """The last `"usage": {...}` in TAIL that holds a valid usage."""
    for match in reversed(list(_USAGE_VALUE.finditer(tail))):
        found = _object_at(tail, match.end(), read)
        if found is not None:
            return found
    return None


def _object_at(
    data: bytes, start: int, read: Callable[[object], TokenUsage | None]
) -> TokenUsage | None:
    """The usage in the object that starts at START: the shortest slice that parses."""
    if not data.startswith(b"{", start):
        return None
    end = data.find(b"}", start)
    while 0 <= end < start + MAX_USAGE_OBJECT:
        try:
            return read(orjson.loads(data[start : end + 1]))
        except orjson.JSONDecodeError:
            end = data.find(b"}", end + 1)
    return None
