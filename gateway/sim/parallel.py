"""Answering a request for several sequences (n > 1, a batched prompt) as vLLM 0.32 does.

Read in vllm/entrypoints/openai/completion/serving.py,
chat_completion/serving.py, vllm/v1/engine/parallel_sampling.py,
output_processor.py, vllm/v1/metrics/{stats,loggers}.py:

- Choices. Chat: `n` choices, `index` 0..n-1. Completions: one engine
  request per prompt, each with `n` choices; choice `c` of prompt `p` has
  `index = p * n + c`, streamed and not (the non-streamed list is in that
  order).
- Usage. `prompt_tokens` counts each prompt once, whatever `n` is (chat: the
  one prompt; completions: the sum over prompts); `completion_tokens` is the
  sum over every choice of every prompt. Streamed, the single usage event
  (`stream_options.include_usage`) carries these totals and the fingerprint;
  `continuous_usage_stats` puts on each chunk its own prompt's tokens and its
  own choice's tokens so far.
- Streamed events. Chat first sends one role event per choice (index
  0..n-1). Token events are per choice, one choice per event, interleaved as
  the engine steps: each step yields a token for every running sequence.
  Here that is position by position, in index order. Each choice's last
  token event carries its finish_reason and, when no usage event follows,
  `system_fingerprint`; a finished choice sends nothing more.
- Engine metrics. Every sequence is an engine request of its own (n > 1 is
  a parent request fanned out into n child requests): each counts its
  prompt in `vllm:prompt_tokens_total` (so n x the prompt), its tokens in
  `vllm:generation_tokens_total` (the sum equals usage's completion_tokens),
  and one `vllm:request_success_total{finished_reason}` when it finishes, or
  one abort.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.sim.engine import Engine, Sequence, SequenceGroup
from gateway.sim.exchange import Exchange
from gateway.sim.knobs import Knobs
from gateway.sim.protocol import (
    Choice,
    Identity,
    chat_choices_body,
    completion_choices_body,
)
from gateway.sim.requests import GenerationRequest, ParallelRequest
from gateway.sim.stream import DONE, SseFrames
from gateway.sim.text import choice_seed, output_text


@dataclass(frozen=True, slots=True)
class _Choice:
    """Choice CHOICE of the prompt REPLY, at INDEX in the response."""

    index: int
    choice: int
    reply: GenerationRequest

    @property
    def tokens(self) -> int:
        return self.reply.completion_tokens

    def text(self) -> str:
        return output_text(choice_seed(self.reply.prompt_text, self.choice), self.reply.words)


def _choices(request: ParallelRequest) -> list[_Choice]:
    n = request.n
    return [
        _Choice(prompt * n + choice, choice, reply)
        for prompt, reply in enumerate(request.prompts)
        for choice in range(n)
    ]


class ParallelGenerator:
    """Chat and completions answers with several sequences, on the shared engine."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def answer(
        self, exchange: Exchange, knobs: Knobs, arrival: float, answer: ParallelAnswer
    ) -> None:
        """Send ANSWER for a request that arrived at ARRIVAL (`time.perf_counter()`)."""
        choices = _choices(answer.request)
        prompts = [choice.reply.prompt_tokens for choice in choices]
        # A full queue is refused before anything is sent, streamed or not.
        group = self._engine.group(prompts, knobs.ttft_ms, knobs.itl_ms, arrival)
        if answer.request.stream:
            await answer.stream(exchange, group, choices, knobs.drop_after)
        else:
            await answer.respond(exchange, group, choices, knobs.drop_after)


@dataclass(frozen=True, slots=True)
class ParallelAnswer:
    """What a response with several choices says: REQUEST's, as chat or completions."""

    request: ParallelRequest
    ident: Identity
    chat: bool

    async def respond(
        self,
        exchange: Exchange,
        group: SequenceGroup,
        choices: list[_Choice],
        drop_after: int | None,
    ) -> None:
        async with group as sequences:
            for position in range(max(choice.tokens for choice in choices)):
                for choice, sequence in zip(choices, sequences, strict=True):
                    if position < choice.tokens:
                        await sequence.next_token()
            # A non-streamed answer is dropped where it would have been sent: nothing arrives.
            if drop_after is not None:
                raise exchange.drop()
            for choice, sequence in zip(choices, sequences, strict=True):
                sequence.finish(choice.reply.finish_reason)
            listed: list[Choice] = [
                (choice.text(), choice.reply.finish_reason) for choice in choices
            ]
            build = chat_choices_body if self.chat else completion_choices_body
            body = build(
                self.ident, listed, _prompt_tokens(self.request), _completion_tokens(choices)
            )
            await exchange.respond(200, body)

    async def stream(
        self,
        exchange: Exchange,
        group: SequenceGroup,
        choices: list[_Choice],
        drop_after: int | None,
    ) -> None:
        frames = [
            SseFrames(self.ident, self.chat, c.reply, index=c.index, choice=c.choice)
            for c in choices
        ]
        # Like vLLM, headers go out at once and events follow once the engine admits the sequences.
        await exchange.start_stream()
        async with group as sequences:
            if self.chat:
                for frame in frames:
                    await exchange.send_event(frame.role())
            if not await _stream_tokens(exchange, choices, frames, sequences, drop_after):
                # The fault always fires: a reply of N tokens or fewer drops before [DONE].
                raise exchange.drop()
            if self.request.prompts[0].include_usage:
                totals = (_completion_tokens(choices), _prompt_tokens(self.request))
                await exchange.send_event(frames[0].usage(*totals))
            await exchange.end_stream(DONE)


async def _stream_tokens(
    exchange: Exchange,
    choices: list[_Choice],
    frames: list[SseFrames],
    sequences: list[Sequence],
    drop_after: int | None,
) -> bool:
    """Send every choice's token events, a step at a time; False once DROP_AFTER were sent."""
    sent = 0
    for position in range(max(choice.tokens for choice in choices)):
        for choice, frame, sequence in zip(choices, frames, sequences, strict=True):
            if position >= choice.tokens:
                continue
            if sent == drop_after:
                return False
            await sequence.next_token()
            await exchange.send_event(frame.token(position))
            sent += 1
            if position == choice.tokens - 1:
                # Finished as its last event goes out: a later abort leaves it counted so.
                sequence.finish(choice.reply.finish_reason)
    return drop_after is None


def _prompt_tokens(request: ParallelRequest) -> int:
    """Each prompt once, however many choices it has."""
    return sum(reply.prompt_tokens for reply in request.prompts)


def _completion_tokens(choices: list[_Choice]) -> int:
    return sum(choice.tokens for choice in choices)
