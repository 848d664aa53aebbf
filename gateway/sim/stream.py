"""Server-sent events for streamed chat and completions, framed as vLLM 0.32 frames them.

Every event is `data: <compact json>\\n\\n`. A stream is: (chat only) the role
event, one event per output token, where the last token's event carries the
finish reason (a natural stop's last token is the end-of-sequence token, with
empty text), then the usage event if asked for, then `data: [DONE]`. The last
event before `[DONE]` carries `system_fingerprint`.

Token events are the hot path of the benchmark, so each is two precomputed
byte strings around the token's precomputed JSON literal. The templates are
cut out of a real `json.dumps` of the event, so the fast path and the dict
path cannot disagree.
"""

from __future__ import annotations

import json

from gateway.sim.protocol import SYSTEM_FINGERPRINT, Identity, dumps, usage
from gateway.sim.requests import GenerationRequest
from gateway.sim.text import WORD_JSON, WORDS, choice_seed, word_index

DONE = b"data: [DONE]\n\n"
_HOLE = "\x00token\x00"


def event(payload: dict[str, object]) -> bytes:
    return b"data: " + dumps(payload) + b"\n\n"


class SseFrames:
    """The events of one streamed choice, chat (`chat=True`) or completions.

    A response with several choices has one `SseFrames` per choice: INDEX is
    the choice's `index` in the response, CHOICE its number among the
    choices of its prompt, which picks its text (see `text.choice_seed`).
    """

    def __init__(
        self,
        ident: Identity,
        chat: bool,
        request: GenerationRequest,
        index: int = 0,
        choice: int = 0,
    ) -> None:
        self._chat = chat
        self._index = index
        self._seed = choice_seed(request.prompt_text, choice)
        self._prompt_tokens = request.prompt_tokens
        self._continuous_usage = request.continuous_usage
        self._finish_reason = request.finish_reason
        self._words = request.words
        self._last = request.completion_tokens - 1
        # Without a usage event, the finishing token's event is the last before [DONE].
        self._fingerprint_on_finish = not request.include_usage
        self._head = {
            "id": ident.id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": ident.created,
            "model": ident.model,
        }
        marked = self._chunk(_HOLE, finish_reason=None, completion_tokens=None)
        self._before, self._after = marked.split(json.dumps(_HOLE).encode())

    def role(self) -> bytes:
        """The chat stream's first event: the assistant role with empty content."""
        delta = {"role": "assistant", "content": ""}
        choice = {"index": self._index, "delta": delta, "logprobs": None, "finish_reason": None}
        payload: dict[str, object] = {**self._head, "choices": [choice]}
        if self._continuous_usage:
            payload["usage"] = self._running_usage(0)
        payload.update(prompt_token_ids=None, prompt_text=None)
        return event(payload)

    def token(self, position: int) -> bytes:
        """The event for output token POSITION (0-based); the last one finishes the choice."""
        if position < self._last:
            index = word_index(self._seed, position)
            if self._continuous_usage:
                return self._chunk(" " + WORDS[index], None, completion_tokens=position + 1)
            return self._before + WORD_JSON[index] + self._after
        # Past the last word is the end-of-sequence token, which renders as no text.
        text = " " + WORDS[word_index(self._seed, position)] if position < self._words else ""
        return self._chunk(text, self._finish_reason, completion_tokens=position + 1)

    def usage(self, completion_tokens: int, prompt_tokens: int | None = None) -> bytes:
        """The usage-only event that `stream_options.include_usage` asks for: the whole
        response's, PROMPT_TOKENS (default: this choice's prompt) and all choices' tokens."""
        prompt = self._prompt_tokens if prompt_tokens is None else prompt_tokens
        totals = usage(prompt, completion_tokens)
        payload: dict[str, object] = {**self._head, "choices": [], "usage": totals}
        return event({**payload, "system_fingerprint": SYSTEM_FINGERPRINT})

    def _chunk(self, token: str, finish_reason: str | None, completion_tokens: int | None) -> bytes:
        if self._chat:
            choice: dict[str, object] = {"index": self._index, "delta": {"content": token}}
            choice.update(logprobs=None, finish_reason=finish_reason)
            # Chat chunks name stop_reason only once the choice has finished.
            if finish_reason is not None:
                choice["stop_reason"] = None
            choice["token_ids"] = None
        else:
            choice = {"index": self._index, "text": token, "logprobs": None}
            choice.update(finish_reason=finish_reason, stop_reason=None)
            choice.update(prompt_token_ids=None, token_ids=None)
        payload: dict[str, object] = {**self._head, "choices": [choice]}
        # With continuous_usage_stats vLLM puts the running usage on every chunk.
        if self._continuous_usage and completion_tokens is not None:
            payload["usage"] = self._running_usage(completion_tokens)
        if finish_reason is not None and self._fingerprint_on_finish:
            payload["system_fingerprint"] = SYSTEM_FINGERPRINT
        return event(payload)

    def _running_usage(self, completion_tokens: int) -> dict[str, object]:
        totals = usage(self._prompt_tokens, completion_tokens)
        # vLLM 0.32 adds the (null) token details to chat chunks' running usage only.
        if self._chat:
            totals["completion_tokens_details"] = None
        return totals
