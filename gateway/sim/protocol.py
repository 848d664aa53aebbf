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
# The vLLM release whose protocol the simulator follows, in vLLM's
# `vllm-<version>-<hash>` fingerprint format; "simulator" stands for the hash.
VLLM_VERSION = "0.32.0"
SYSTEM_FINGERPRINT = f"vllm-{VLLM_VERSION}-simulator"


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


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, object]:
    """The usage object of streamed chunks."""
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }


def full_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, object]:
    """The usage object of non-streamed responses: with the (always null) token details."""
    return {
        **usage(prompt_tokens, completion_tokens),
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }


def models_body(model: str, created: int, max_model_len: int) -> bytes:
    """vLLM's model list, with `owned_by` saying that this is the simulator."""
    permission = {
        "id": f"modelperm-{uuid.uuid5(uuid.NAMESPACE_URL, model).hex[:16]}",
        "object": "model_permission",
        "created": created,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    card = {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": OWNED_BY,
        "root": model,
        "parent": None,
        "max_model_len": max_model_len,
        "permission": [permission],
    }
    return dumps({"object": "list", "data": [card]})


# The fields that close every non-streamed generation body.
_TAIL = {"kv_transfer_params": None, "ec_transfer_params": None, "metrics": None}


# One choice of a non-streamed body: (text, finish_reason).
Choice = tuple[str, str]


def chat_body(
    ident: Identity, text: str, prompt_tokens: int, completion_tokens: int, finish_reason: str
) -> bytes:
    return chat_choices_body(ident, [(text, finish_reason)], prompt_tokens, completion_tokens)


def chat_choices_body(
    ident: Identity, choices: list[Choice], prompt_tokens: int, completion_tokens: int
) -> bytes:
    """A chat completion with one choice per entry of CHOICES, indexed in order."""
    return dumps(
        {
            **_head(ident, "chat.completion", [_chat_choice(i, *c) for i, c in enumerate(choices)]),
            "usage": full_usage(prompt_tokens, completion_tokens),
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "prompt_text": None,
            **_TAIL,
        }
    )


def _chat_choice(index: int, text: str, finish_reason: str) -> dict[str, object]:
    message: dict[str, object] = {
        "role": "assistant",
        "content": text,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "reasoning": None,
    }
    return {
        "index": index,
        "message": message,
        "logprobs": None,
        "finish_reason": finish_reason,
        "stop_reason": None,
        "token_ids": None,
        "routed_experts": None,
    }


def completion_body(
    ident: Identity, text: str, prompt_tokens: int, completion_tokens: int, finish_reason: str
) -> bytes:
    return completion_choices_body(ident, [(text, finish_reason)], prompt_tokens, completion_tokens)


def completion_choices_body(
    ident: Identity, choices: list[Choice], prompt_tokens: int, completion_tokens: int
) -> bytes:
    """A text completion with one choice per entry of CHOICES, indexed in order."""
    listed = [_completion_choice(i, *choice) for i, choice in enumerate(choices)]
    return dumps(
        {
            **_head(ident, "text_completion", listed),
            "usage": full_usage(prompt_tokens, completion_tokens),
            **_TAIL,
        }
    )


def _completion_choice(index: int, text: str, finish_reason: str) -> dict[str, object]:
    return {
        "index": index,
        "text": text,
        "logprobs": None,
        "finish_reason": finish_reason,
        "stop_reason": None,
        "token_ids": None,
        "prompt_logprobs": None,
        "prompt_token_ids": None,
        "routed_experts": None,
    }


def _head(ident: Identity, kind: str, choices: list[dict[str, object]]) -> dict[str, object]:
    return {
        "id": ident.id,
        "object": kind,
        "created": ident.created,
        "model": ident.model,
        "choices": choices,
        "service_tier": None,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


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
            "usage": full_usage(prompt_tokens, 0),
        }
    )


def _encode(vector: tuple[float, ...], as_base64: bool) -> str | list[float]:
    if not as_base64:
        return list(vector)
    # What the OpenAI SDK decodes: little-endian float32, base64.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
