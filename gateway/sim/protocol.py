"""Response bodies in vLLM's exact field order, serialised compactly.

vLLM renders its pydantic models with `model_dump_json()`, which writes
fields in declaration order without spaces; `json.dumps` with compact
separators over dicts built in that order gives the same bytes.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from dataclasses import dataclass

DETERMINISTIC_CREATED = 1700000000
OWNED_BY = "vllm-gateway-simulator"


def dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Identity:
    """The `id`, `created` and `model` fields every response of one request shares."""

    id: str
    created: int
    model: str

    @classmethod
    def mint(cls, prefix: str, model: str, request_id: str | None, deterministic: bool) -> Identity:
        if deterministic:
            return cls(f"{prefix}-sim", DETERMINISTIC_CREATED, model)
        # vLLM derives the response id from the caller's X-Request-Id when there is one.
        suffix = request_id or uuid.uuid4().hex
        return cls(f"{prefix}-{suffix}", int(time.time()), model)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }


def models_body(model: str, created: int, max_model_len: int) -> bytes:
    card = {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": OWNED_BY,
        "root": model,
        "parent": None,
        "max_model_len": max_model_len,
        "permission": [],
    }
    return dumps({"object": "list", "data": [card]})


def chat_body(ident: Identity, text: str, prompt_tokens: int, completion_tokens: int) -> bytes:
    message: dict[str, object] = {
        "role": "assistant",
        "content": text,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "tool_calls": [],
        "reasoning_content": None,
    }
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": "length",
        "stop_reason": None,
    }
    return dumps(
        {
            "id": ident.id,
            "object": "chat.completion",
            "created": ident.created,
            "model": ident.model,
            "choices": [choice],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": {**usage(prompt_tokens, completion_tokens), "prompt_tokens_details": None},
            "prompt_logprobs": None,
            "kv_transfer_params": None,
        }
    )


def completion_body(
    ident: Identity, text: str, prompt_tokens: int, completion_tokens: int
) -> bytes:
    choice = {
        "index": 0,
        "text": text,
        "logprobs": None,
        "finish_reason": "length",
        "stop_reason": None,
        "prompt_logprobs": None,
    }
    return dumps(
        {
            "id": ident.id,
            "object": "text_completion",
            "created": ident.created,
            "model": ident.model,
            "choices": [choice],
            "usage": {**usage(prompt_tokens, completion_tokens), "prompt_tokens_details": None},
            "kv_transfer_params": None,
        }
    )


def embedding_body(
    ident: Identity, vectors: list[tuple[float, ...]], prompt_tokens: int, as_base64: bool
) -> bytes:
    data = [
        {"index": index, "object": "embedding", "embedding": _encode(vector, as_base64)}
        for index, vector in enumerate(vectors)
    ]
    return dumps(
        {
            "id": ident.id,
            "object": "list",
            "created": ident.created,
            "model": ident.model,
            "data": data,
            "usage": {**usage(prompt_tokens, 0), "prompt_tokens_details": None},
        }
    )


def _encode(vector: tuple[float, ...], as_base64: bool) -> str | list[float]:
    if not as_base64:
        return list(vector)
    # What the OpenAI SDK decodes: little-endian float32, base64.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
