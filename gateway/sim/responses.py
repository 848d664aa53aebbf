"""OpenAI's Responses API (`/v1/responses`, GET by id, cancel) as vLLM 0.32 serves it.

What vLLM does (vllm/entrypoints/openai/responses/serving.py, api_router.py):

- a Response's id is `resp_` + a random hex uuid (the body's `request_id`,
  which a client may set; the header's X-Request-Id plays no part);
- a non-streamed answer is the Response as JSON, `id` first, `usage` with
  `input_tokens` and `output_tokens`; `status` is `incomplete` (with
  `incomplete_details.reason: max_output_tokens`) when the limit cut it off;
- a stream is `event: <type>\\ndata: <json>\\n\\n` per event, no `[DONE]`:
  response.created, response.in_progress, output_item.added,
  content_part.added, one output_text.delta per token with text,
  output_text.done, content_part.done, output_item.done, and
  response.completed (whatever the status) with the whole Response and its
  usage; each event carries its `sequence_number`;
- with `VLLM_ENABLE_RESPONSES_API_STORE=1` each finished Response (unless
  `"store": false`) is kept in the replica's memory: `GET /v1/responses/{id}`
  returns it, an unknown id is a 404 naming `response_id`, and cancelling a
  response that is not queued or in progress (any non-background one) is a
  400. The simulator always stores (up to MAX_STORED, oldest dropped).
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.sim.config import SimConfig
from gateway.sim.engine import Engine
from gateway.sim.errors import BadRequest, SimError, field_error
from gateway.sim.exchange import JSON_HEADERS, Handler, Headers, Receive, Scope, Send, send_response
from gateway.sim.fields import optional_bool, optional_int, required
from gateway.sim.generate import Call
from gateway.sim.protocol import DETERMINISTIC_CREATED, Identity, dumps
from gateway.sim.requests import check_model, reply_plan
from gateway.sim.text import WORDS, count_tokens, output_text, seed_of, word_index

MAX_STORED = 10_000
PREFIX = "/v1/responses/"


def event(kind: str, sequence: int, payload: Mapping[str, object]) -> bytes:
    # OpenAI's event models declare their fields alphabetically; vLLM dumps them so.
    fields = {**payload, "sequence_number": sequence, "type": kind}
    body = dumps(dict(sorted(fields.items())))
    return b"event: " + kind.encode() + b"\ndata: " + body + b"\n\n"


def not_found(response_id: str) -> SimError:
    return SimError(
        404, f"Response with id '{response_id}' not found.", "response_id", "invalid_request_error"
    )


class ResponsesGenerator:
    """The Responses endpoints over the simulator's engine, with vLLM's in-memory store."""

    def __init__(self, config: SimConfig, engine: Engine) -> None:
        self._config = config
        self._engine = engine
        self._store: OrderedDict[str, bytes] = OrderedDict()

    async def create(self, call: Call, payload: dict[str, object]) -> None:
        required(payload, "model")
        check_model(payload, self._config.model)
        limit = optional_int(payload, "max_output_tokens")
        stream = optional_bool(payload, "stream")
        text, prompt_tokens = _prompt(payload)
        try:
            words, finish_reason = reply_plan(limit, prompt_tokens, self._config)
        except BadRequest as exc:
            raise BadRequest(exc.message.replace("max_tokens", "max_output_tokens")) from exc
        plan = _Plan(
            ident=self._identity(payload),
            seed=seed_of(text),
            prompt_tokens=prompt_tokens,
            words=words,
            tokens=words + (finish_reason == "stop"),
            finish_reason=finish_reason,
            limit=limit if limit is not None else self._config.max_model_len - prompt_tokens,
            instructions=_optional_str(payload, "instructions"),
            previous=_optional_str(payload, "previous_response_id"),
        )
        body = await (self._stream(call, plan) if stream else self._respond(call, plan))
        if body is not None and payload.get("store") is not False:
            self._store[plan.ident.id] = body
            while len(self._store) > MAX_STORED:
                self._store.popitem(last=False)

    def stored(self, response_id: str) -> bytes:
        body = self._store.get(response_id)
        if body is None:
            raise not_found(response_id)
        return body

    def cancel(self, response_id: str) -> bytes:
        self.stored(response_id)
        # Every simulated response is synchronous and finished: vLLM's answer for those.
        raise SimError(
            400, "Cannot cancel a synchronous response.", "response_id", "invalid_request_error"
        )

    def routes_for(self, path: str) -> dict[str, Handler] | None:
        """The handler of `GET /v1/responses/{id}` or `POST .../{id}/cancel` at PATH."""
        rest = path.removeprefix(PREFIX)
        cancel = rest.endswith("/cancel")
        response_id = rest.removesuffix("/cancel")
        if not response_id or "/" in response_id:
            return None

        async def answer(scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
            try:
                status, body = 200, (self.cancel if cancel else self.stored)(response_id)
            except SimError as error:
                status, body = error.status, error.body()
            await send_response(send, status, body, JSON_HEADERS)

        return {"POST" if cancel else "GET": answer}

    def _identity(self, payload: dict[str, object]) -> Identity:
        given = payload.get("request_id")
        if isinstance(given, str) and given:
            return Identity(given, DETERMINISTIC_CREATED, self._config.model)
        if self._config.deterministic:
            return Identity("resp_sim", DETERMINISTIC_CREATED, self._config.model)
        # vLLM's random_uuid(): 16 hex digits.
        return Identity(f"resp_{uuid.uuid4().hex[:16]}", int(time.time()), self._config.model)

    async def _respond(self, call: Call, plan: _Plan) -> bytes | None:
        sequence = self._engine.sequence(
            plan.prompt_tokens, call.knobs.ttft_ms, call.knobs.itl_ms, call.arrival
        )
        async with sequence:
            for _ in range(plan.tokens):
                await sequence.next_token()
            if call.knobs.drop_after is not None:
                raise call.exchange.drop()
            sequence.finish(plan.finish_reason)
            body = dumps(plan.response(final=True))
            await call.exchange.respond(200, body)
        return body

    async def _stream(self, call: Call, plan: _Plan) -> bytes | None:
        exchange, knobs = call.exchange, call.knobs
        pending = self._engine.sequence(
            plan.prompt_tokens, knobs.ttft_ms, knobs.itl_ms, call.arrival
        )
        await exchange.start_stream()
        async with pending as sequence:
            start = {"response": plan.response(final=False)}
            await exchange.send_event(event("response.created", 0, start))
            await exchange.send_event(event("response.in_progress", 1, start))
            for number, (kind, payload) in enumerate(plan.opening(), 2):
                await exchange.send_event(event(kind, number, payload))
            number = 4
            for position in range(plan.tokens):
                if position == knobs.drop_after:
                    break
                await sequence.next_token()
                if position < plan.words:
                    await exchange.send_event(event(*plan.delta(position, number)))
                    number += 1
            if knobs.drop_after is not None:
                raise exchange.drop()
            sequence.finish(plan.finish_reason)
            for kind, payload in plan.closing():
                await exchange.send_event(event(kind, number, payload))
                number += 1
            final = plan.response(final=True)
            await exchange.end_stream(event("response.completed", number, {"response": final}))
        return dumps(final)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Plan:
    """One Response: its identity, prompt and output tokens."""

    ident: Identity
    seed: int
    prompt_tokens: int
    words: int
    tokens: int
    finish_reason: str
    limit: int
    instructions: str | None
    previous: str | None

    @property
    def item_id(self) -> str:
        return self.ident.id.replace("resp_", "msg_", 1)

    def text(self) -> str:
        return output_text(self.seed, self.words)

    def part(self, text: str, *, opening: bool = False) -> dict[str, object]:
        # vLLM opens a part with no logprobs yet ([]) and closes it without them (null).
        logprobs: list[object] | None = [] if opening else None
        return {"annotations": [], "text": text, "type": "output_text", "logprobs": logprobs}

    def item(self, final: bool) -> dict[str, object]:
        content = [self.part(self.text())] if final else []
        status = "completed" if final else "in_progress"
        kind = "message"
        return {
            "id": self.item_id,
            "content": content,
            "role": "assistant",
            "status": status,
            "type": kind,
            "phase": None,
        }

    def opening(self) -> list[tuple[str, dict[str, object]]]:
        at = {"item_id": self.item_id, "output_index": 0}
        return [
            ("response.output_item.added", {"item": self.item(False), "output_index": 0}),
            (
                "response.content_part.added",
                {"content_index": 0, **at, "part": self.part("", opening=True)},
            ),
        ]

    def delta(self, position: int, number: int) -> tuple[str, int, dict[str, object]]:
        text = " " + WORDS[word_index(self.seed, position)]
        delta = {"content_index": 0, "delta": text, "item_id": self.item_id, "logprobs": []}
        return "response.output_text.delta", number, {**delta, "output_index": 0}

    def closing(self) -> list[tuple[str, dict[str, object]]]:
        at = {"item_id": self.item_id, "output_index": 0}
        text = self.text()
        done = {"content_index": 0, **at, "logprobs": [], "text": text}
        return [
            ("response.output_text.done", done),
            ("response.content_part.done", {"content_index": 0, **at, "part": self.part(text)}),
            ("response.output_item.done", {"item": self.item(True), "output_index": 0}),
        ]

    def response(self, *, final: bool) -> dict[str, object]:
        """The Response as vLLM dumps it: every field, in its declaration order."""
        incomplete = final and self.finish_reason == "length"
        status = ("incomplete" if incomplete else "completed") if final else "in_progress"
        return {
            "id": self.ident.id,
            "created_at": self.ident.created,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": self.instructions,
            "metadata": None,
            "model": self.ident.model,
            "object": "response",
            "output": [self.item(True)] if final else [],
            "parallel_tool_calls": True,
            "temperature": 1.0,
            "tool_choice": "none",
            "tools": [],
            "top_p": 1.0,
            "background": False,
            "max_output_tokens": self.limit,
            "max_tool_calls": None,
            "previous_response_id": self.previous,
            "prompt": None,
            "reasoning": None,
            "service_tier": "auto",
            "status": status,
            "text": None,
            "top_logprobs": None,
            "truncation": "disabled",
            "usage": self.usage() if final else None,
            "user": None,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "input_messages": None,
            "output_messages": None,
        }

    def usage(self) -> dict[str, object]:
        return {
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {
                "cached_tokens": 0,
                "cache_write_tokens": 0,
                "input_tokens_per_turn": [],
                "cached_tokens_per_turn": [],
            },
            "output_tokens": self.tokens,
            "output_tokens_details": {
                "reasoning_tokens": 0,
                "tool_output_tokens": 0,
                "output_tokens_per_turn": [],
                "tool_output_tokens_per_turn": [],
            },
            "total_tokens": self.prompt_tokens + self.tokens,
        }


def _prompt(payload: dict[str, object]) -> tuple[str, int]:
    """The prompt text as the chat template would see it: instructions, then each item."""
    value = required(payload, "input")
    texts: list[str] = []
    instructions = payload.get("instructions")
    if isinstance(instructions, str):
        texts.append(instructions)
    if isinstance(value, str):
        texts.append(value)
    elif isinstance(value, list):
        texts += [_item_text(item) for item in value]
    else:
        raise field_error("string_type", "body.input", "Input should be a valid string", value)
    text = "\n".join(t for t in texts if t)
    return text, max(count_tokens(text), 1)


def _item_text(item: object) -> str:
    if not isinstance(item, dict):
        raise BadRequest("Each input item must be an object")
    content = item.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return " ".join(
        part["text"]
        for part in content
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    )


def _optional_str(payload: dict[str, object], name: str) -> str | None:
    value = payload.get(name)
    return value if isinstance(value, str) else None
