"""Token usage read from Anthropic Messages answers as they pass, bytes unchanged.

A Messages stream always carries its usage (nothing to ask for, nothing to
strip): `message_start` holds `message.usage.input_tokens`, and the last
`message_delta` holds `usage.output_tokens` (vLLM puts `input_tokens` there
too). The usage is known only once a `message_delta` came: a stream cut off
before it is charged its reservation, as any answer of unknown usage.

Only an event holding the bytes `"usage"` is parsed; a read's trailing partial
event is kept (up to MAX_EVENT) until its blank line arrives, but every byte
goes on to the client as it came.
"""

from __future__ import annotations

from gateway.proxy.event_stream import EventWatcher, data_of
from gateway.proxy.usage_scan import BodyUsage, is_count
from gateway.usage.records import TokenUsage

_STOP_REASON = b'"stop_reason":"'
# Anthropic bills cached prompt tokens apart from input_tokens: all of them are prompt.
_INPUT_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


class MessagesStreamUsage(EventWatcher):
    """Watches a Messages event stream. `usage` is set once a `message_delta` gave it;
    with `reasons`, each `stop_reason` seen is added to that list (a traced request's)."""

    def __init__(self, *, strip: bool = False, reasons: list[str] | None = None) -> None:
        super().__init__(reasons=reasons)
        self._input: int | None = None

    def _read(self, event: bytes) -> None:
        data = data_of(event)
        kind = data.get("type") if data else None
        if kind == "message_start":
            message = data.get("message") if data else None
            usage = message.get("usage") if isinstance(message, dict) else None
            self._input = _input_tokens(usage)
        elif kind == "message_delta" and data is not None:
            usage = data.get("usage")
            output = usage.get("output_tokens") if isinstance(usage, dict) else None
            prompt = _input_tokens(usage) or self._input
            if is_count(output) and prompt is not None:
                self.usage = TokenUsage(prompt, output)
            delta = data.get("delta")
            reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            if self.reasons is not None and isinstance(reason, str):
                self.reasons.append(reason)


def messages_body_usage() -> BodyUsage:
    """A reader of a non-streamed Message's `usage`."""
    return BodyUsage(reader=message_usage)


def message_usage(value: object) -> TokenUsage | None:
    """A Message's `usage` object as token counts; None unless both counts are valid."""
    if not isinstance(value, dict):
        return None
    prompt = _input_tokens(value)
    output = value.get("output_tokens")
    if prompt is None or not is_count(output):
        return None
    return TokenUsage(prompt, output)


def _input_tokens(usage: object) -> int | None:
    """All the prompt tokens of a usage object, None without a valid `input_tokens`.
    A zero (vLLM's message_start without usage) counts as unknown."""
    if not isinstance(usage, dict) or not is_count(usage.get("input_tokens")):
        return None
    counts = [usage.get(name) for name in _INPUT_FIELDS]
    total = sum(count for count in counts if is_count(count))
    return total or None
