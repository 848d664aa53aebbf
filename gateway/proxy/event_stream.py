"""Reading `event:`-framed streams (Anthropic's Messages, OpenAI's Responses) as they
pass, bytes unchanged.

Only an event holding the bytes `"usage"` is parsed (or what else a subclass's
`wants` asks for); a read's trailing partial event is kept (up to MAX_EVENT)
until its blank line arrives, but every byte goes on to the client as it came.
A subclass says what one such event means.
"""

from __future__ import annotations

import orjson

from gateway.proxy.usage_scan import MAX_EVENT, USAGE_KEY
from gateway.usage.records import TokenUsage


class EventWatcher:
    """`usage` once the stream gave it; with `reasons`, each finish reason seen is
    added to that list (a traced request's)."""

    def __init__(self, *, reasons: list[str] | None = None) -> None:
        self.usage: TokenUsage | None = None
        self.reasons = reasons
        self._partial = b""

    def feed(self, chunk: bytes) -> bytes:
        """Returns CHUNK: nothing is ever withheld or changed."""
        if not self._partial and chunk.endswith(b"\n\n"):
            if self.wants(chunk):
                self._scan(chunk)
            return chunk
        data = self._partial + chunk
        lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\n\r\n")
        cut = max(lf + 2 if lf >= 0 else 0, crlf + 3 if crlf >= 0 else 0)
        whole, self._partial = data[:cut], data[cut:]
        if self.wants(whole):
            self._scan(whole)
        if len(self._partial) > MAX_EVENT:
            self._partial = b""
        return chunk

    def end(self) -> bytes:
        self._partial = b""
        return b""

    def wants(self, events: bytes) -> bool:
        """Whether EVENTS may hold one this watcher reads: any with usage, by default."""
        return USAGE_KEY in events

    def _scan(self, events: bytes) -> None:
        for event in events.replace(b"\r\n", b"\n").split(b"\n\n"):
            if self.wants(event):
                self._read(event)

    def _read(self, event: bytes) -> None:
        raise NotImplementedError


def data_of(event: bytes) -> dict[str, object] | None:
    """The JSON object on an event's `data:` line (an `event:` line may come first)."""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            try:
                value = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None
    return None
