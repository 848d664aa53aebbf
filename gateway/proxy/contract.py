"""The request contract: every field the gateway reads for policy, checked before admission.

vLLM validates requests with pydantic's lax rules: `"max_tokens": "4000"`,
`2000.0`, `"n": "8"` and `"stream": 1` are all honoured. If the gateway
enforced only exact JSON types and forwarded the rest, a key capped at 32
tokens could ask for 4,000 as a string, and a stream written `1` would dodge
the usage the gateway adds. So every field below is read here, once, and
either refused (400 naming the `param`) or rewritten to its canonical JSON
value before the cap, the reservation and the usage logic look at it; a
rewritten body is re-serialised, so vLLM never sees a value whose meaning
differs from the one the gateway enforced.

Field by field (routes: C chat, P completions, E embeddings):

  model                  all    a non-empty string, else 400 (body.py)
  stream                 C P    true, false or null; 1, "true", ... are 400
  stream_options         C P    an object or null; include_usage and
                                continuous_usage_stats true, false or null
  max_tokens             C P    an integer >= 1 or null: an integral number
  max_completion_tokens  C      (2000.0, 1e2) becomes that integer; strings,
  n, best_of             C P    booleans, fractions and values below the
  dimensions             E      minimum are 400
  min_tokens             C P    as above, >= 0
  messages               C      a non-empty array
  prompt, prompt_embeds  P      a string, a token-id array, or a non-empty
                                array of strings or token-id arrays; each
                                element is one prompt
  input (or messages)    E      as prompt; each element is one input

Integers stay below 2**31: vLLM's engine takes no larger counts, and a huge
value could only be a probe. `n` and `best_of` are read on both generation
routes: vLLM ignores `best_of` on chat, but counting it there costs nothing.
A request asks for `prompts * max(n, best_of)` sequences; each is capped and
reserved on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequest
from gateway.proxy.routes import Route

MAX_COUNT = 2**31 - 1
BYTES_PER_TOKEN = 4

_OPTION_BOOLS = ("include_usage", "continuous_usage_stats")
_COUNTS = {
    Route.CHAT: ("max_tokens", "max_completion_tokens", "n", "best_of"),
    Route.COMPLETIONS: ("max_tokens", "n", "best_of"),
    Route.EMBEDDINGS: ("dimensions",),
}


@dataclass(frozen=True, slots=True)
class Terms:
    """What a request asks for, read from its canonical values."""

    stream: bool
    # Prompts in a completions batch, inputs in an embeddings batch; 1 for chat.
    prompts: int
    # Sequences generated per prompt: max(n, best_of).
    choices: int
    # A prompt estimate: body bytes / 4, plus one per token id (ids are short in JSON).
    prompt_tokens: int
    # A value was rewritten: the body must be serialised again.
    changed: bool

    @property
    def sequences(self) -> int:
        return self.prompts * self.choices


def read_terms(route: Route, payload: dict[str, Any], body_size: int) -> Terms:
    """Check and normalise PAYLOAD (in place) for ROUTE; InvalidRequest names the field."""
    changed = False
    for name in _COUNTS[route]:
        changed |= check_count(payload, name, minimum=1)
    stream, choices = False, 1
    if route is Route.EMBEDDINGS:
        prompts, token_ids = _inputs(payload)
    else:
        changed |= check_count(payload, "min_tokens", minimum=0)
        stream = check_bool(payload, "stream")
        _stream_options(payload)
        if route is Route.CHAT:
            check_messages(payload)
            prompts, token_ids = 1, 0
        else:
            prompts, token_ids = _prompts(payload)
        choices = max(payload.get("n") or 1, payload.get("best_of") or 1)
    prompt_tokens = body_size // BYTES_PER_TOKEN + 1 + token_ids
    return Terms(stream, prompts, choices, prompt_tokens, changed)


def check_count(payload: dict[str, Any], name: str, *, minimum: int) -> bool:
    """Check one integer field; True if it was rewritten (an integral float)."""
    value = payload.get(name)
    if value is None:
        return False
    rewritten = False
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_COUNT:
        value = int(value)
        rewritten = True
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be an integer, not {kind_of(value)}.", param=name)
    if not minimum <= value <= MAX_COUNT:
        raise InvalidRequest(
            f"'{name}' must be between {minimum} and {MAX_COUNT}, not {value}.", param=name
        )
    if rewritten:
        payload[name] = value
    return rewritten


def check_bool(payload: dict[str, Any], name: str) -> bool:
    value = payload.get(name)
    if value is None or isinstance(value, bool):
        return value is True
    raise InvalidRequest(f"'{name}' must be true or false, not {kind_of(value)}.", param=name)


def _stream_options(payload: dict[str, Any]) -> None:
    options = payload.get("stream_options")
    if options is None:
        return
    if not isinstance(options, dict):
        raise InvalidRequest(
            f"'stream_options' must be an object, not {kind_of(options)}.", param="stream_options"
        )
    for name in _OPTION_BOOLS:
        value = options.get(name)
        if value is not None and not isinstance(value, bool):
            raise InvalidRequest(
                f"'stream_options.{name}' must be true or false, not {kind_of(value)}.",
                param=f"stream_options.{name}",
            )


def check_messages(payload: dict[str, Any]) -> None:
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")


def _prompts(payload: dict[str, Any]) -> tuple[int, int]:
    """Prompts and token ids of a completions request (`prompt` and `prompt_embeds`)."""
    prompt = payload.get("prompt")
    embeds = payload.get("prompt_embeds")
    if prompt is None and embeds is None:
        raise InvalidRequest("'prompt' is required.", param="prompt")
    prompts, token_ids = (0, 0) if prompt is None else _batch(prompt, "prompt")
    if embeds is not None:
        if isinstance(embeds, str):
            prompts += 1
        elif isinstance(embeds, list) and embeds and all(isinstance(e, str) for e in embeds):
            prompts += len(embeds)
        else:
            raise InvalidRequest(
                "'prompt_embeds' must be a string or a non-empty array of strings.",
                param="prompt_embeds",
            )
    return prompts, token_ids


def _inputs(payload: dict[str, Any]) -> tuple[int, int]:
    """Inputs and token ids of an embeddings request (`input`, or chat-style `messages`)."""
    if "input" not in payload and "messages" in payload:
        check_messages(payload)
        return 1, 0
    return _batch(payload.get("input"), "input")


def _batch(value: object, name: str) -> tuple[int, int]:
    """How many prompts VALUE holds, and how many token ids: a string, a list of token
    ids, or a non-empty list of either strings or token-id lists."""
    if isinstance(value, str):
        return 1, 0
    if isinstance(value, list) and value:
        if all(_is_token_id(item) for item in value):
            return 1, len(value)
        if all(isinstance(item, str) for item in value):
            return len(value), 0
        if all(_is_token_ids(item) for item in value):
            return len(value), sum(len(item) for item in value)
    raise InvalidRequest(
        f"'{name}' must be a string, an array of token ids, or a non-empty array of "
        "strings or of token-id arrays.",
        param=name,
    )


def _is_token_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_token_ids(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_token_id(i) for i in value)


def kind_of(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, float):
        return "a fraction"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a number" if isinstance(value, int) else "null"
