"""Server-sent events for streamed chat and completions, framed as vLLM frames them.

Every event is `data: <compact json>\\n\\n`. Content events are the hot path of
the benchmark, so each is two precomputed byte strings around the token's
precomputed JSON literal. The templates are cut out of a real `json.dumps`
of the chunk, so the fast path and the dict path cannot disagree.
"""

from __future__ import annotations

import json

from gateway.sim.protocol import Identity, dumps, usage
from gateway.sim.text import WORD_JSON, WORDS, word_index

DONE = b"data: [DONE]\n\n"
_HOLE = "\x00token\x00"


def event(payload: dict[str, object]) -> bytes:
    return b"data: " + dumps(payload) + b"\n\n"


class SseFrames:
    """The events of one streamed response, chat (`chat=True`) or completions."""

    def __init__(
        self, ident: Identity, chat: bool, seed: int, prompt_tokens: int, continuous_usage: bool
    ) -> None:
        self._chat = chat
        self._seed = seed
        self._prompt_tokens = prompt_tokens
        self._continuous_usage = continuous_usage
        self._head = {
            "id": ident.id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": ident.created,
            "model": ident.model,
        }
        marked = self._chunk(_HOLE, completion_tokens=None)
        before, after = marked.split(json.dumps(_HOLE).encode())
        self._before = before
        self._after = after

    def role(self) -> bytes:
        """The chat stream's first event: the assistant role with empty content."""
        delta = {"role": "assistant", "content": ""}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        return self._event([choice], completion_tokens=0)

    def content(self, position: int) -> bytes:
        """The event for output token POSITION (0-based)."""
        index = word_index(self._seed, position)
        if self._continuous_usage:
            return self._chunk(" " + WORDS[index], completion_tokens=position + 1)
        return self._before + WORD_JSON[index] + self._after

    def finish(self, completion_tokens: int) -> bytes:
        if self._chat:
            choice: dict[str, object] = {"index": 0, "delta": {}}
        else:
            choice = {"index": 0, "text": ""}
        choice.update(logprobs=None, finish_reason="length", stop_reason=None)
        return self._event([choice], completion_tokens=completion_tokens)

    def usage(self, completion_tokens: int) -> bytes:
        """The usage-only event that `stream_options.include_usage` asks for."""
        return event({**self._head, "choices": [], "usage": self._usage(completion_tokens)})

    def _chunk(self, token: str, completion_tokens: int | None) -> bytes:
        if self._chat:
            choice: dict[str, object] = {"index": 0, "delta": {"content": token}}
            choice.update(logprobs=None, finish_reason=None)
        else:
            choice = {"index": 0, "text": token, "logprobs": None}
            choice.update(finish_reason=None, stop_reason=None)
        return self._event([choice], completion_tokens)

    def _event(self, choices: list[dict[str, object]], completion_tokens: int | None) -> bytes:
        payload: dict[str, object] = {**self._head, "choices": choices}
        # With continuous_usage_stats vLLM puts the running usage on every chunk.
        if self._continuous_usage and completion_tokens is not None:
            payload["usage"] = self._usage(completion_tokens)
        return event(payload)

    def _usage(self, completion_tokens: int) -> dict[str, int]:
        return usage(self._prompt_tokens, completion_tokens)
