"""Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`) as vLLM 0.32 serves it.

vLLM turns a Messages request into a chat request (`max_tokens` becomes both
max_tokens and max_completion_tokens; a stream asks for `include_usage` and
`continuous_usage_stats`) and converts the answer back
(vllm/entrypoints/anthropic/serving.py):

- a non-streamed Message is `model_dump(exclude_none=True)`: id (the chat
  id), type, role, content (one text block), model, stop_reason, usage;
- a stream is `event: <type>\\ndata: <json>\\n\\n` per event, no `[DONE]`:
  message_start (usage.input_tokens from the role chunk, output_tokens 0),
  content_block_start at the first non-empty text, one content_block_delta
  per token with text (the end-of-sequence token has none), then
  content_block_stop and message_delta (stop_reason, usage with input and
  output tokens) when the usage chunk comes, and message_stop at `[DONE]`.
  Every event is `model_dump_json(exclude_unset=True)`;
- errors from vLLM's handlers are `{"type": "error", "error": {"type",
  "message"}}` with vLLM's own type names; FastAPI's field validation keeps
  vLLM's OpenAI-shaped body.

Field types are read leniently, as pydantic does: `"max_tokens": "20"` is 20.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from gateway.sim.config import SimConfig
from gateway.sim.engine import Engine
from gateway.sim.errors import BadRequest, SimError, field_error
from gateway.sim.fields import list_field, optional_bool, optional_int, required
from gateway.sim.generate import Call
from gateway.sim.protocol import Identity, dumps
from gateway.sim.requests import check_model, message_text, reply_plan
from gateway.sim.text import WORDS, count_tokens, output_text, seed_of, word_index

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


class MessagesError(SimError):
    """An error vLLM's Messages router translates into Anthropic's shape (same status)."""

    def body(self) -> bytes:
        error = {"type": self.kind, "message": self.message}
        return json.dumps({"type": "error", "error": error}, separators=(",", ":")).encode()


def event(kind: str, payload: dict[str, object]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + dumps({"type": kind, **payload}) + b"\n\n"


class MessagesGenerator:
    """The two Messages endpoints over the simulator's one engine."""

    def __init__(self, config: SimConfig, engine: Engine) -> None:
        self._config = config
        self._engine = engine

    async def messages(self, call: Call, payload: dict[str, object]) -> None:
        limit = optional_int(payload, "max_tokens")
        if "max_tokens" not in payload or limit is None:
            raise field_error("missing", "body.max_tokens", "Field required", payload)
        if limit <= 0:
            message = "Value error, max_tokens must be positive"
            raise field_error("value_error", "body.max_tokens", message, limit)
        stream = optional_bool(payload, "stream")
        prompt_text, prompt_tokens = self._prompt(payload)
        try:
            words, finish_reason = reply_plan(limit, prompt_tokens, self._config)
        except BadRequest as exc:
            raise MessagesError(exc.status, exc.message, kind=exc.kind) from exc
        tokens = words + (finish_reason == "stop")
        ident = Identity.mint(
            "chatcmpl", self._config.model, call.request_id, self._config.deterministic
        )
        plan = _Plan(
            ident=ident,
            seed=seed_of(prompt_text),
            prompt_tokens=prompt_tokens,
            words=words,
            tokens=tokens,
            finish_reason=finish_reason,
        )
        if stream:
            await self._stream(call, plan)
        else:
            await self._respond(call, plan)

    async def count_tokens(self, call: Call, payload: dict[str, object]) -> None:
        _, tokens = self._prompt(payload)
        body = {"input_tokens": tokens, "context_management": {"original_input_tokens": tokens}}
        await call.exchange.respond(200, dumps(body))

    def _prompt(self, payload: dict[str, object]) -> tuple[str, int]:
        """The prompt as the chat template would see it: the system text, then each message."""
        required(payload, "model")
        messages = list_field(payload, "messages")
        try:
            check_model(payload, self._config.model)
            texts = [_system_text(payload.get("system"))]
            texts += [message_text(message) for message in messages]
        except SimError as exc:
            raise MessagesError(exc.status, exc.message, kind=exc.kind) from exc
        prompt_text = "\n".join(text for text in texts if text)
        return prompt_text, max(count_tokens(prompt_text), 1)

    async def _respond(self, call: Call, plan: _Plan) -> None:
        sequence = self._engine.sequence(
            plan.prompt_tokens, call.knobs.ttft_ms, call.knobs.itl_ms, call.arrival
        )
        async with sequence:
            for _ in range(plan.tokens):
                await sequence.next_token()
            if call.knobs.drop_after is not None:
                raise call.exchange.drop()
            sequence.finish(plan.finish_reason)
            await call.exchange.respond(200, plan.body())

    async def _stream(self, call: Call, plan: _Plan) -> None:
        exchange, knobs = call.exchange, call.knobs
        pending = self._engine.sequence(
            plan.prompt_tokens, knobs.ttft_ms, knobs.itl_ms, call.arrival
        )
        await exchange.start_stream()
        async with pending as sequence:
            await exchange.send_event(plan.start())
            opened = False
            for position in range(plan.tokens):
                if position == knobs.drop_after:
                    break
                await sequence.next_token()
                text = plan.text(position)
                if text and not opened:
                    opened = True
                    block = {"content_block": {"type": "text", "text": ""}, "index": 0}
                    await exchange.send_event(event("content_block_start", block))
                if text:
                    delta = {"delta": {"type": "text_delta", "text": text}, "index": 0}
                    await exchange.send_event(event("content_block_delta", delta))
            if knobs.drop_after is not None:
                raise exchange.drop()
            sequence.finish(plan.finish_reason)
            if opened:
                await exchange.send_event(event("content_block_stop", {"index": 0}))
            await exchange.send_event(plan.end())
            await exchange.end_stream(event("message_stop", {}))


@dataclass(frozen=True, slots=True, kw_only=True)
class _Plan:
    """One Message's reply: its identity, prompt and output tokens."""

    ident: Identity
    seed: int
    prompt_tokens: int
    words: int
    tokens: int
    finish_reason: str

    def text(self, position: int) -> str:
        """Token POSITION's text; the end-of-sequence token has none."""
        return " " + WORDS[word_index(self.seed, position)] if position < self.words else ""

    def usage(self, output_tokens: int) -> dict[str, object]:
        return {"input_tokens": self.prompt_tokens, "output_tokens": output_tokens}

    def body(self) -> bytes:
        text = output_text(self.seed, self.words)
        content = [{"type": "text", "text": text}] if text else []
        return dumps(
            {
                "id": self.ident.id,
                "type": "message",
                "role": "assistant",
                "content": content,
                "model": self.ident.model,
                "stop_reason": STOP_REASONS[self.finish_reason],
                "usage": self.usage(self.tokens),
            }
        )

    def start(self) -> bytes:
        message: dict[str, object] = {
            "id": self.ident.id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self.ident.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self.usage(0),
        }
        return event("message_start", {"message": message})

    def end(self) -> bytes:
        delta = {"stop_reason": STOP_REASONS[self.finish_reason], "stop_sequence": None}
        return event("message_delta", {"delta": delta, "usage": self.usage(self.tokens)})


def _system_text(system: object) -> str:
    """`system` as vLLM joins it: a string, or the text of its text blocks."""
    if system is None or isinstance(system, str):
        return system or ""
    if not isinstance(system, list):
        raise field_error("string_type", "body.system", "Input should be a valid string", system)
    return "".join(
        block["text"]
        for block in system
        if isinstance(block, dict)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
    )
