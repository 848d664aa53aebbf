"""Request bodies parsed and validated the way vLLM's OpenAI server does it.

Only what the simulator acts on is read; unknown fields are ignored, as
vLLM's pydantic models ignore them. Every rejection is a `BadRequest` (400)
or `ModelNotFound` (404) with vLLM's message where the simulator knows it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TypeGuard

from gateway.sim.config import SimConfig
from gateway.sim.errors import BadRequest, ModelNotFound
from gateway.sim.text import count_tokens

JSON_ONLY = "Unsupported Media Type: Only 'application/json' is allowed"


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A chat or completions request, reduced to what the simulated engine needs."""

    prompt_text: str
    prompt_tokens: int
    max_tokens: int
    stream: bool
    include_usage: bool
    continuous_usage: bool


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    texts: tuple[str, ...]
    prompt_tokens: int
    base64: bool


def check_content_type(content_type: bytes | None) -> None:
    media_type = (content_type or b"").split(b";", 1)[0].strip().lower()
    if media_type != b"application/json":
        raise BadRequest(JSON_ONLY)


def parse_object(body: bytes, served_model: str) -> dict[str, object]:
    """Decode BODY as a JSON object and check its `model` against the served one."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"JSON decode error: {exc}") from exc
    if not isinstance(payload, dict):
        raise BadRequest("The request body must be a JSON object")
    model = payload.get("model")
    # vLLM serves its default model when `model` is omitted.
    if model is not None and model != served_model:
        raise ModelNotFound(str(model))
    return payload


def parse_chat(payload: dict[str, object], config: SimConfig) -> GenerationRequest:
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("Field required: `messages` must be a non-empty list of messages")
    texts = [_message_text(message) for message in messages]
    prompt_text = "\n".join(texts)
    limit = payload.get("max_completion_tokens")
    if limit is None:
        limit = payload.get("max_tokens")
    return _generation(payload, prompt_text, count_tokens(prompt_text), limit, config)


def parse_completion(payload: dict[str, object], config: SimConfig) -> GenerationRequest:
    if "prompt" not in payload:
        raise BadRequest("Field required: `prompt`")
    prompt = payload["prompt"]
    if isinstance(prompt, list) and prompt and not _is_token_ids(prompt):
        if len(prompt) != 1:
            raise BadRequest("The simulator does not support batched prompts")
        prompt = prompt[0]
    prompt_text, prompt_tokens = _input_text(prompt, "prompt")
    return _generation(payload, prompt_text, prompt_tokens, payload.get("max_tokens"), config)


def parse_embedding(payload: dict[str, object], config: SimConfig) -> EmbeddingRequest:
    if "input" not in payload:
        raise BadRequest("Field required: `input`")
    raw = payload["input"]
    items = [raw] if isinstance(raw, str) or _is_token_ids(raw) else raw
    if not isinstance(items, list) or not items:
        raise BadRequest("`input` must be a string, a list of strings or token ids, not empty")
    parsed = [_input_text(item, "input") for item in items]
    for _, tokens in parsed:
        if tokens > config.max_model_len:
            raise BadRequest(
                f"This model's maximum context length is {config.max_model_len} tokens. "
                f"However, you requested {tokens} tokens in the input for embedding "
                "generation. Please reduce the length of the input."
            )
    encoding = payload.get("encoding_format")
    if encoding not in (None, "float", "base64"):
        raise BadRequest("`encoding_format` must be 'float' or 'base64'")
    dimensions = payload.get("dimensions")
    if dimensions is not None and dimensions != config.embedding_dim:
        raise BadRequest(
            f'Model "{config.model}" does not support matryoshka representation, '
            "changing output dimensions will lead to poor results."
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
    limit: object,
    config: SimConfig,
) -> GenerationRequest:
    stream = payload.get("stream") or False
    if not isinstance(stream, bool):
        raise BadRequest("`stream` must be a boolean")
    n = payload.get("n")
    if n is not None and n != 1:
        raise BadRequest("The simulator supports only n=1")
    options = payload.get("stream_options")
    if options is not None and not stream:
        raise BadRequest("Stream options can only be defined when `stream=True`.")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("`stream_options` must be an object")
    options = options or {}
    return GenerationRequest(
        prompt_text=prompt_text,
        prompt_tokens=max(prompt_tokens, 1),
        max_tokens=_max_tokens(limit, max(prompt_tokens, 1), config),
        stream=stream,
        include_usage=options.get("include_usage") is True,
        continuous_usage=options.get("continuous_usage_stats") is True,
    )


def _max_tokens(limit: object, prompt_tokens: int, config: SimConfig) -> int:
    context = config.max_model_len
    if prompt_tokens >= context:
        raise BadRequest(
            f"This model's maximum context length is {context} tokens. However, you "
            f"requested {prompt_tokens} tokens in the messages, Please reduce the length "
            "of the messages."
        )
    if limit is None:
        # vLLM fills the context when no limit is given; the simulator uses its default.
        return min(config.default_max_tokens, context - prompt_tokens)
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise BadRequest("`max_tokens` must be an integer")
    if limit < 1:
        raise BadRequest(f"max_tokens must be at least 1, got {limit}.")
    if prompt_tokens + limit > context:
        raise BadRequest(
            f"This model's maximum context length is {context} tokens. However, you "
            f"requested {prompt_tokens + limit} tokens ({prompt_tokens} in the messages, "
            f"{limit} in the completion). Please reduce the length of the messages or "
            "completion."
        )
    return limit


def _message_text(message: object) -> str:
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
