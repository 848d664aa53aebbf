"""Answering chat, completions and embeddings requests with the simulated engine."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.sim.config import SimConfig
from gateway.sim.embeddings import embed
from gateway.sim.engine import Engine, Sequence
from gateway.sim.exchange import Exchange
from gateway.sim.knobs import Knobs
from gateway.sim.parallel import ParallelAnswer, ParallelGenerator
from gateway.sim.protocol import Identity, chat_body, completion_body, embedding_body
from gateway.sim.requests import (
    GenerationRequest,
    ParallelRequest,
    parse_chat,
    parse_completion,
    parse_embedding,
)
from gateway.sim.stream import DONE, SseFrames
from gateway.sim.text import output_text, seed_of

BodyBuilder = Callable[[Identity, str, int, int, str], bytes]


@dataclass(slots=True)
class Call:
    """What one generation request carries besides its body."""

    exchange: Exchange
    knobs: Knobs
    request_id: str | None
    arrival: float = field(default_factory=time.perf_counter)


class Generator:
    """The three generation endpoints over one engine and one configuration."""

    def __init__(self, config: SimConfig, engine: Engine) -> None:
        self._config = config
        self._engine = engine
        self._fan_out = ParallelGenerator(engine)

    async def chat(self, call: Call, payload: dict[str, object]) -> None:
        request = parse_chat(payload, self._config)
        ident = self._identity("chatcmpl", call)
        if isinstance(request, ParallelRequest):
            await self._parallel(call, request, ident, chat=True)
        elif request.stream:
            await self._stream(call, request, ident, chat=True)
        else:
            await self._respond(call, request, ident, chat_body)

    async def completion(self, call: Call, payload: dict[str, object]) -> None:
        request = parse_completion(payload, self._config)
        ident = self._identity("cmpl", call)
        if isinstance(request, ParallelRequest):
            await self._parallel(call, request, ident, chat=False)
        elif request.stream:
            await self._stream(call, request, ident, chat=False)
        else:
            await self._respond(call, request, ident, completion_body)

    async def embedding(self, call: Call, payload: dict[str, object]) -> None:
        request = parse_embedding(payload, self._config)
        ident = self._identity("embd", call)
        async with self._sequence(call, request.prompt_tokens) as sequence:
            await sequence.pool()
            if call.knobs.drop_after is not None:
                raise call.exchange.drop()
            vectors = [embed(text, self._config.embedding_dim) for text in request.texts]
            body = embedding_body(ident, vectors, request.prompt_tokens, request.base64)
            sequence.finish("stop")
            await call.exchange.respond(200, body)

    async def _respond(
        self, call: Call, request: GenerationRequest, ident: Identity, build: BodyBuilder
    ) -> None:
        async with self._sequence(call, request.prompt_tokens) as sequence:
            self._engine.prefill(sequence, request.prompt_text, request.prompt_tokens)
            for _ in range(request.completion_tokens):
                await sequence.next_token()
            # A non-streamed answer is dropped where it would have been sent: nothing arrives.
            if call.knobs.drop_after is not None:
                raise call.exchange.drop()
            text = output_text(seed_of(request.prompt_text), request.words)
            tokens = request.completion_tokens
            body = build(ident, text, request.prompt_tokens, tokens, request.finish_reason)
            sequence.finish(request.finish_reason)
            await call.exchange.respond(200, body)

    async def _stream(
        self, call: Call, request: GenerationRequest, ident: Identity, chat: bool
    ) -> None:
        frames = SseFrames(ident, chat, request)
        exchange = call.exchange
        # A full queue is refused before anything is sent; otherwise, like vLLM, headers go
        # out at once and events follow once the engine admits the request.
        pending = self._sequence(call, request.prompt_tokens)
        await exchange.start_stream()
        drop_after = call.knobs.drop_after
        async with pending as sequence:
            self._engine.prefill(sequence, request.prompt_text, request.prompt_tokens)
            if chat:
                await exchange.send_event(frames.role())
            for position in range(request.completion_tokens):
                if position == drop_after:
                    break
                await sequence.next_token()
                await exchange.send_event(frames.token(position))
            if drop_after is not None:
                # The fault always fires: a reply of N tokens or fewer drops before [DONE].
                raise exchange.drop()
            sequence.finish(request.finish_reason)
            if request.include_usage:
                await exchange.send_event(frames.usage(request.completion_tokens))
            await exchange.end_stream(DONE)

    async def _parallel(
        self, call: Call, request: ParallelRequest, ident: Identity, chat: bool
    ) -> None:
        # Several sequences (n > 1, a batched prompt): kept off the single-sequence fast path.
        answer = ParallelAnswer(request, ident, chat)
        await self._fan_out.answer(call.exchange, call.knobs, call.arrival, answer)

    def _identity(self, prefix: str, call: Call) -> Identity:
        config = self._config
        return Identity.mint(prefix, config.model, call.request_id, config.deterministic)

    def _sequence(self, call: Call, prompt_tokens: int) -> Sequence:
        knobs = call.knobs
        return self._engine.sequence(prompt_tokens, knobs.ttft_ms, knobs.itl_ms, call.arrival)
