"""Request bodies parsed and validated the way vLLM's OpenAI server does it.

The order of checks is vLLM's: FastAPI's field validation ("Bad Request"),
then the served model (404), then vLLM's own checks ("BadRequestError").

What vLLM 0.32 does with several prompts, several choices and `best_of`
(read in vllm/entrypoints/openai/completion/{protocol,serving}.py,
chat_completion/{protocol,serving}.py and vllm/sampling_params.py):

- `prompt` is `list[int] | list[list[int]] | str | list[str]`: a string or
  one token-id list is one prompt; a list of either is a batch (at most
  VLLM_MAX_COMPLETION_PROMPTS = 1024), each prompt its own engine request
  with its own max_tokens default (what is left of its context).
- `n` is `int = 1` on completions (null refused) and `int | None = 1` on
  chat (null means 1); SamplingParams refuses n < 1, n > VLLM_MAX_N_SEQUENCES
  (16384) and, with greedy sampling (temperature < 1e-5), any n > 1.
- `best_of` is not a field of either request model in 0.32, nor of
  SamplingParams: like any unknown field it is accepted with any value and
  ignored (only a debug log line). One sequence per choice is generated and
  billed; nothing more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeGuard

from gateway.sim.config import SimConfig
from gateway.sim.errors import BadRequest, ModelNotFound, field_error
from gateway.sim.fields import (
    list_field,
    optional_bool,
    optional_float,
    optional_int,
    required,
    unsupported_media_type,
)
from gateway.sim.text import count_tokens


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A chat or completions request, reduced to what the simulated engine needs.

    The reply is `words` output words, then, when `finish_reason` is "stop",
    one end-of-sequence token that renders as no text (as a real model's EOS).
    """

    prompt_text: str
    prompt_tokens: int
    words: int
    finish_reason: str
    stream: bool
    include_usage: bool
    continuous_usage: bool

    @property
    def completion_tokens(self) -> int:
        return self.words + (self.finish_reason == "stop")


@dataclass(frozen=True, slots=True)
class ParallelRequest:
    """A request for several sequences: n > 1, or a batched completions prompt.

    `prompts` holds one reply plan per prompt (chat has one); each prompt is
    answered `n` times, choice `c` of prompt `p` at index `p * n + c`.
    """

    prompts: tuple[GenerationRequest, ...]
    n: int

    @property
    def stream(self) -> bool:
        return self.prompts[0].stream


# vLLM's VLLM_MAX_COMPLETION_PROMPTS and VLLM_MAX_N_SEQUENCES defaults.
MAX_PROMPTS = 1024
MAX_N = 16384
# Below this temperature vLLM samples greedily (sampling_params._SAMPLING_EPS).
_SAMPLING_EPS = 1e-5


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    texts: tuple[str, ...]
    prompt_tokens: int
    base64: bool


def check_content_type(content_type: bytes | None) -> None:
    media_type = (content_type or b"").split(b";", 1)[0].strip().lower()
    if media_type != b"application/json":
        raise unsupported_media_type()


def check_model(payload: dict[str, object], served: str, listed: bool = True) -> None:
    """vLLM serves its default model when `model` is omitted; another name is a 404."""
    model = payload.get("model")
    if model is not None and model != served:
        raise ModelNotFound(str(model), served if listed else None)


def parse_chat(
    payload: dict[str, object], config: SimConfig
) -> GenerationRequest | ParallelRequest:
    messages = list_field(payload, "messages")
    limit = optional_int(payload, "max_completion_tokens")
    if limit is None:
        limit = optional_int(payload, "max_tokens")
    n = _choices(payload, nullable=True)
    temperature = optional_float(payload, "temperature")
    stream = optional_bool(payload, "stream")
    check_model(payload, config.model)
    if not messages:
        raise BadRequest(
            "Cannot apply chat template to an empty conversation. Provide at least one message."
        )
    prompt_text = "\n".join(message_text(message) for message in messages)
    tokens = count_tokens(prompt_text)
    request = _generation(payload, prompt_text, tokens, limit, stream=stream, config=config)
    return _fan_out((request,), n, temperature)


def parse_completion(
    payload: dict[str, object], config: SimConfig
) -> GenerationRequest | ParallelRequest:
    limit = optional_int(payload, "max_tokens")
    n = _choices(payload, nullable=False)
    temperature = optional_float(payload, "temperature")
    stream = optional_bool(payload, "stream")
    check_model(payload, config.model)
    prompt = payload.get("prompt")
    if prompt is None or prompt in ("", []):
        raise BadRequest(
            "Either prompt or prompt_embeds must be provided and non-empty.", param="prompt"
        )
    items = _prompt_items(prompt)
    parsed = [_input_text(item, "prompt") for item in items]
    requests = tuple(
        _generation(payload, text, tokens, limit, stream=stream, config=config)
        for text, tokens in parsed
    )
    return _fan_out(requests, n, temperature)


def _choices(payload: dict[str, object], *, nullable: bool) -> int:
    """`n` read leniently; chat's is `int | None` (null is 1), completions' a plain `int`."""
    if payload.get("n", 1) is None and not nullable:
        raise field_error("int_type", "body.n", "Input should be a valid integer", None)
    n = optional_int(payload, "n")
    return 1 if n is None else n


def _prompt_items(prompt: object) -> list[object]:
    """The prompts of a completions request: one, or a batch of strings or of token lists."""
    if isinstance(prompt, str) or _is_token_ids(prompt):
        return [prompt]
    if not isinstance(prompt, list):
        raise BadRequest("`prompt` must be a string or a list of token ids")
    if len(prompt) > MAX_PROMPTS:
        raise BadRequest(
            f"prompt list length {len(prompt)} exceeds the maximum allowed count of "
            f"{MAX_PROMPTS}. To increase this limit, set the VLLM_MAX_COMPLETION_PROMPTS "
            "environment variable.",
            param="prompt",
        )
    # pydantic takes a list as all strings or all token lists, never a mix of the two.
    if all(isinstance(item, str) for item in prompt) or all(map(_is_token_ids, prompt)):
        return prompt
    raise field_error(
        "list_type", "body.prompt", "Input should be a list of strings or of token-id lists", prompt
    )


def _fan_out(
    requests: tuple[GenerationRequest, ...],
    n: int,
    temperature: float | None,
) -> GenerationRequest | ParallelRequest:
    """The single-sequence request as it was, or the several sequences vLLM would run.

    vLLM checks `n` when it builds the sampling parameters, after the
    prompts' length and max_tokens checks.
    """
    _check_sampling(n, temperature)
    if n == 1 and len(requests) == 1:
        return requests[0]
    return ParallelRequest(requests, n)


def _check_sampling(n: int, temperature: float | None) -> None:
    """SamplingParams' checks of n and temperature, in its order and words."""
    if n < 1:
        raise BadRequest(f"n must be at least 1, got {n}.")
    if n > MAX_N:
        raise BadRequest(
            f"n must be at most {MAX_N}, got {n}. To increase this limit, set the "
            "VLLM_MAX_N_SEQUENCES environment variable."
        )
    if temperature is None:
        return
    if not math.isfinite(temperature):
        raise BadRequest(
            f"temperature must be a finite number, got {temperature}.",
            param="temperature",
            value=temperature,
        )
    if temperature < 0:
        raise BadRequest(
            f"temperature must be non-negative, got {temperature}.",
            param="temperature",
            value=temperature,
        )
    if temperature < _SAMPLING_EPS and n > 1:
        raise BadRequest(f"n must be 1 when using greedy sampling, got {n}.")


def parse_embedding(payload: dict[str, object], config: SimConfig) -> EmbeddingRequest:
    raw = required(payload, "input")
    encoding = payload.get("encoding_format")
    check_model(payload, config.model, listed=False)
    items = [raw] if isinstance(raw, str) or _is_token_ids(raw) else raw
    if not isinstance(items, list) or not items:
        raise BadRequest("You must pass at least one prompt")
    parsed = [_input_text(item, "input") for item in items]
    for _, tokens in parsed:
        _check_prompt_length(tokens, config.max_model_len)
    if encoding not in (None, "float", "base64"):
        raise BadRequest("The simulator supports only the 'float' and 'base64' encoding formats")
    dimensions = payload.get("dimensions")
    if dimensions is not None:
        raise BadRequest(
            f"Model '{config.model}' does not support Matryoshka embeddings; dimensions "
            f"must be unset (received dimensions={dimensions})."
        )
    return EmbeddingRequest(
        texts=tuple(text for text, _ in parsed),
        prompt_tokens=sum(tokens for _, tokens in parsed),
        base64=encoding == "base64",
    )


def _generation(
    payload: dict[str, object],
    prompt_text: str,
    prompt_tokens: int,
    limit: int | None,
    *,
    stream: bool,
    config: SimConfig,
) -> GenerationRequest:
    options = payload.get("stream_options")
    if options is not None and not stream:
        raise BadRequest(
            "Stream options can only be defined when `stream=True`.", param="stream_options"
        )
    if options is not None and not isinstance(options, dict):
        raise BadRequest("`stream_options` must be an object")
    options = options or {}
    include_usage = options.get("include_usage") is True
    words, finish_reason = reply_plan(limit, max(prompt_tokens, 1), config)
    return GenerationRequest(
        prompt_text=prompt_text,
        prompt_tokens=max(prompt_tokens, 1),
        words=words,
        finish_reason=finish_reason,
        stream=stream,
        include_usage=include_usage,
        # vLLM ignores continuous_usage_stats unless include_usage is on too.
        continuous_usage=include_usage and options.get("continuous_usage_stats") is True,
    )


def reply_plan(limit: int | None, prompt_tokens: int, config: SimConfig) -> tuple[int, str]:
    """The reply's word count and finish reason, after vLLM's max_tokens checks.

    An explicit limit is always filled ("length"). Without one, vLLM would
    let the model run to its end-of-sequence token: the simulated model
    stops by itself after `default_max_tokens` tokens, EOS included ("stop").
    """
    context = config.max_model_len
    if limit is not None and limit > context:
        raise BadRequest(
            f"max_tokens={limit} cannot be greater than max_model_len={context}. "
            "Please request fewer output tokens.",
            param="max_tokens",
            value=limit,
        )
    _check_prompt_length(prompt_tokens, context)
    room = context - prompt_tokens
    if limit is None and 1 <= config.default_max_tokens <= room:
        return config.default_max_tokens - 1, "stop"
    # vLLM caps the limit at what is left of the context, then checks it.
    tokens = room if limit is None else min(limit, room)
    if tokens < 1:
        raise BadRequest(
            f"max_tokens must be at least 1, got {tokens}.", param="max_tokens", value=tokens
        )
    return tokens, "length"


def _check_prompt_length(prompt_tokens: int, context: int) -> None:
    if prompt_tokens > context:
        # vLLM stops counting one token past the context, so it says "at least" that many.
        seen = context + 1
        raise BadRequest(
            f"This model's maximum context length is {context} tokens. However, your prompt "
            f"contains at least {seen} input tokens, which exceeds this limit even without "
            "any output tokens. Please reduce the length of the input prompt.",
            param="input_tokens",
            value=seen,
        )


def message_text(message: object) -> str:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise BadRequest("Each message must be an object with a `role`")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise BadRequest("Message `content` must be a string or a list of parts")
    # Non-text parts (images, audio) cost nothing in the simulator's token count.
    texts = [
        part["text"]
        for part in content
        if isinstance(part, dict)
        and part.get("type") == "text"
        and isinstance(part.get("text"), str)
    ]
    return " ".join(texts)


def _is_token_ids(value: object) -> TypeGuard[list[int]]:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, int) and not isinstance(item, bool) for item in value)
    )


def _input_text(value: object, field: str) -> tuple[str, int]:
    """The text a prompt stands for, and its token count (at least 1)."""
    if isinstance(value, str):
        return value, max(count_tokens(value), 1)
    if _is_token_ids(value):
        return " ".join(str(token) for token in value), len(value)
    raise BadRequest(f"`{field}` must be a string or a list of token ids")
