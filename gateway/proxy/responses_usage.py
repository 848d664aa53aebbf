"""Token usage and the created response's id, read from Responses answers as they pass.

Bytes are never changed. A Responses stream always carries its usage (there
is nothing to ask for, nothing to strip): the terminal event
(`response.completed`, `response.incomplete` or `response.failed`) holds the
whole Response, whose `usage` has `input_tokens` and `output_tokens`. A
stream cut off before it is charged its reservation, as any answer of
unknown usage. The first event, `response.created`, names the response's id.

A non-streamed Response is JSON whose first field is its `id` (vLLM dumps
`id` first), so the id is known from the first read, before the client has
seen it; its `usage` is read at the end like chat's.
"""

from __future__ import annotations

import re

from gateway.proxy.event_stream import EventWatcher, data_of
from gateway.proxy.usage_scan import USAGE_KEY, BodyUsage, is_count
from gateway.usage.records import TokenUsage

TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
CREATED = "response.created"
_CREATED_KEY = b'"response.created"'
# The id as vLLM and OpenAI mint it; the same charset the by-id routes accept.
RESPONSE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_HEAD = 512
_HEAD_ID = re.compile(rb'\{\s*"id"\s*:\s*"([A-Za-z0-9_-]{1,128})"')


class ResponseWatch:
    """What one Responses answer said about itself: its id, once seen. Makes the
    scanners the route's framing uses (`gateway.proxy.framing.Framing`)."""

    def __init__(self) -> None:
        self.id: str | None = None

    def stream(self, *, strip: bool = False, reasons: list[str] | None = None) -> StreamUsage:
        return StreamUsage(self, reasons=reasons)

    def body(self) -> ResponseBodyUsage:
        return ResponseBodyUsage(self)

    def saw(self, value: object) -> None:
        if self.id is None and isinstance(value, str) and RESPONSE_ID.fullmatch(value):
            self.id = value


class StreamUsage(EventWatcher):
    """Watches a Responses event stream; `usage` is set by its terminal event. With
    `reasons`, each terminal status (completed, incomplete, ...) is added to that list."""

    def __init__(self, watch: ResponseWatch, *, reasons: list[str] | None = None) -> None:
        super().__init__(reasons=reasons)
        self._watch = watch

    def wants(self, events: bytes) -> bool:
        # The created event is read for its id whether or not it carries a `usage` field.
        return USAGE_KEY in events or (self._watch.id is None and _CREATED_KEY in events)

    def _read(self, event: bytes) -> None:
        data = data_of(event)
        response = data.get("response") if data is not None else None
        if data is None or not isinstance(response, dict):
            return
        kind = data.get("type")
        if kind == CREATED:
            self._watch.saw(response.get("id"))
        elif kind in TERMINAL:
            found = response_usage(response.get("usage"))
            if found is not None:
                self.usage = found
            status = response.get("status")
            if self.reasons is not None and isinstance(status, str):
                self.reasons.append(status)


class ResponseBodyUsage(BodyUsage):
    """A non-streamed Response: its id from the first bytes, its usage at the end."""

    def __init__(self, watch: ResponseWatch) -> None:
        super().__init__(reader=response_usage)
        self._watch = watch
        self._head = b""

    def feed(self, chunk: bytes) -> None:
        if self._watch.id is None and len(self._head) < _HEAD:
            self._head += chunk[:_HEAD]
            found = _HEAD_ID.match(self._head)
            if found is not None:
                self._watch.saw(found.group(1).decode("ascii"))
        super().feed(chunk)


def response_usage(value: object) -> TokenUsage | None:
    """A Response's `usage` as token counts; None unless both counts are valid."""
    if not isinstance(value, dict):
        return None
    prompt, output = value.get("input_tokens"), value.get("output_tokens")
    if is_count(prompt) and is_count(output):
        return TokenUsage(prompt, output)
    return None
