"""Pure helpers for comparing a vLLM-protocol server with real vLLM.

`shape` reduces a JSON value to its structure; `shape_differences` names each
place two structures differ; `unlisted` names each key a field table does not
list; `sse_events` checks vLLM's SSE framing rules and returns the events;
`chunk_kind` and `kinds` classify streamed chunks. None of them does I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

# How each JSON scalar type is named in a shape.
_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (bool, "bool"),  # before int: a bool is an int in Python
    (int, "int"),
    (float, "float"),
    (str, "str"),
    (type(None), "null"),
)

# The SSE framing rules a vLLM stream follows; `sse_events` reports each broken one by name.
FRAMING_RULES = {
    "sse-lf-only": "lines end in LF, never CRLF or CR",
    "sse-data-only": "every event is one `data: ` line: no `event:`, `id:`, `retry:` or comments",
    "sse-blank-line": "every event ends with one blank line (`\\n\\n`), no other blank lines",
    "sse-compact-json": "every payload but [DONE] is compact JSON: no whitespace outside strings",
    "sse-done-last": "the last event is `data: [DONE]`, it appears once and nothing follows it",
}

DONE = "[DONE]"

# Every rule the comparison checks, by the name its assertion messages give.
RULES = {
    **FRAMING_RULES,
    "fields-listed": "every key either side sends is listed in FIELDS at its path, in the "
    "listed order (a stale table fails on vLLM's side)",
    "content-type": "the same Content-Type header: SSE, JSON, Prometheus text or none",
    "json-framing": "non-streamed JSON is compact and sent with a Content-Length",
    "stream-kinds": "the same chunk kinds in the same order: role, content, finish, usage "
    "(a run of content chunks counts once; a 'length' finish is the last content chunk)",
    "chunk-shape": "each chunk kind has the same keys, in the same order, with the same JSON "
    "types, nested the same way",
    "finish-reason": "the finish_reason the request calls for ('length' or 'stop'), stop_reason "
    "null",
    "role-delta": "the chat stream's first delta is exactly {role: assistant, content: ''}",
    "object": "the same `object` values (chat.completion[.chunk], text_completion, list, "
    "embedding) and the same `model`",
    "id-prefix": "ids start with the same prefix (chatcmpl-, cmpl-, embd-)",
    "fingerprint": "system_fingerprint is a string naming the same vLLM version "
    "(vllm-<version>-...)",
    "usage-adds-up": "usage.total_tokens is prompt_tokens + completion_tokens",
    "content-events": "a stream with usage sends as many generating events (content and "
    "finish) per completion token on either side: one each, in vLLM 0.32",
    "body-shape": "non-streamed bodies (chat, completions, embeddings, errors, models) have the "
    "same keys, key order, JSON types and nesting",
    "error-status": "errors have the same status code (and Allow header for a 405)",
    "error-fields": "errors have the same error.type, error.param and error.code",
    "error-message": "errors have the same message, where the text does not depend on the "
    "tokenizer",
    "models-values": "/v1/models has the same values except ids, timestamps, root and the EXEMPT "
    "owned_by",
    "health": "/health is an empty 200",
    "metric-families": "each metric family the gateway reads exists with the same type, sample "
    "names and label names",
    "metric-buckets": "histograms have the same bucket boundaries",
    "metric-reasons": "vllm:request_success has the same finished_reason label values",
    "abort-counters": "a client that leaves a stream mid-generation moves the same "
    "vllm:request_success series (none, in vLLM 0.32), stops running at once, and has some "
    "but not all of its tokens counted in vllm:generation_tokens",
}
# The one value the comparison exempts: the simulator announces itself here.
EXEMPT = {"owned_by": ("vllm", "vllm-gateway-simulator")}


# The families the gateway's routing and dashboards read.
GATEWAY_METRICS = (
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:request_success",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
)


_CHUNK_USAGE = "prompt_tokens total_tokens completion_tokens completion_tokens_details"
_BODY_USAGE = (
    "prompt_tokens total_tokens completion_tokens prompt_tokens_details completion_tokens_details"
)
_CARD = "id object created owned_by root parent max_model_len permission"
_PERMISSION = (
    "id object created allow_create_engine allow_sampling allow_logprobs allow_search_indices "
    "allow_view allow_fine_tuning organization group is_blocking"
)
_ERRORS = {"$": "error detail", "$.error": "message type param code"}
# Every field compared, as vLLM 0.32 sends it: per kind of body, each object's
# path and the keys that may appear there, in their order. Some appear only in
# some chunks: `usage` (continuous usage or the usage chunk), `prompt_token_ids`
# and `prompt_text` (the role chunk), `system_fingerprint` (the last chunk
# before [DONE]), `stop_reason` (a chat choice once finished), `role` (the
# role delta), `completion_tokens_details` (chat's running usage), `detail`
# (a 404 or 405 from the router) instead of `error`.
FIELDS: dict[str, dict[str, str]] = {
    "chat chunk": {
        "$": "id object created model choices usage prompt_token_ids prompt_text "
        "system_fingerprint",
        "$.choices[]": "index delta logprobs finish_reason stop_reason token_ids",
        "$.choices[].delta": "role content",
        "$.usage": _CHUNK_USAGE,
    },
    "completion chunk": {
        "$": "id object created model choices usage system_fingerprint",
        "$.choices[]": "index text logprobs finish_reason stop_reason prompt_token_ids token_ids",
        "$.usage": _CHUNK_USAGE,
    },
    "chat": {
        "$": "id object created model choices service_tier system_fingerprint usage "
        "prompt_logprobs prompt_token_ids prompt_text kv_transfer_params ec_transfer_params "
        "metrics",
        "$.choices[]": "index message logprobs finish_reason stop_reason token_ids routed_experts",
        "$.choices[].message": "role content refusal annotations audio function_call reasoning",
        "$.usage": _BODY_USAGE,
    },
    "completion": {
        "$": "id object created model choices service_tier system_fingerprint usage "
        "kv_transfer_params ec_transfer_params metrics",
        "$.choices[]": "index text logprobs finish_reason stop_reason token_ids prompt_logprobs "
        "prompt_token_ids routed_experts",
        "$.usage": _BODY_USAGE,
    },
    "embeddings": {
        "$": "id object created model data usage",
        "$.data[]": "index object embedding",
        "$.usage": _BODY_USAGE,
    },
    "error": _ERRORS,
    "models": {"$": "object data", "$.data[]": _CARD, "$.data[].permission[]": _PERMISSION},
}


def rule(name: str) -> str:
    """NAME and its description, for an assertion message."""
    return f"[{name}] {RULES[name]}"


def shape(value: object) -> object:
    """VALUE with every scalar replaced by its JSON type name ("str", "int", "null", ...).

    Dicts keep their keys in order: vLLM writes pydantic models in declaration
    order, so the order is stable and part of what is compared. A list becomes
    the list of its distinct element shapes in first-seen order, so lengths
    (n choices, 384 floats) are values, not shape.
    """
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        distinct: dict[str, object] = {}
        for item in value:
            item_shape = shape(item)
            distinct.setdefault(json.dumps(item_shape), item_shape)
        return list(distinct.values())
    for kind, name in _TYPE_NAMES:
        if isinstance(value, kind):
            return name
    raise TypeError(f"not a JSON value: {value!r}")


def shape_differences(expected: object, actual: object, path: str = "$") -> list[str]:
    """Every place where shape ACTUAL differs from shape EXPECTED, as `path: what` lines."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        return _dict_differences(expected, actual, path)
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{path}: element shapes {expected} != {actual}"]
        found: list[str] = []
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            found += shape_differences(left, right, f"{path}[{index}]")
        return found
    if expected != actual:
        return [f"{path}: expected {_brief(expected)}, got {_brief(actual)}"]
    return []


def _dict_differences(
    expected: dict[str, object], actual: dict[str, object], path: str
) -> list[str]:
    found = [f"{path}: missing key {key!r}" for key in expected if key not in actual]
    found += [f"{path}: unexpected key {key!r}" for key in actual if key not in expected]
    common = [key for key in expected if key in actual]
    if not found and common != list(actual):
        found.append(f"{path}: key order {list(actual)} != {list(expected)}")
    for key in common:
        found += shape_differences(expected[key], actual[key], f"{path}.{key}")
    return found


def unlisted(value: object, fields: Mapping[str, str], path: str = "$") -> list[str]:
    """Each key of VALUE that FIELDS does not list, or lists in another order.

    FIELDS maps an object's path (`$`, `$.choices[]`, `$.choices[].delta`) to
    the space-separated keys that may appear there, in the order they appear.
    """
    if isinstance(value, list):
        return [line for item in value for line in unlisted(item, fields, f"{path}[]")]
    if not isinstance(value, dict):
        return []
    if path not in fields:
        return [f"{path}: an object the field table does not list"]
    order = fields[path].split()
    found = [f"{path}.{key}: not listed" for key in value if key not in order]
    positions = [order.index(key) for key in value if key in order]
    if positions != sorted(positions):
        found.append(f"{path}: keys {list(value)} are not in the listed order")
    for key, item in value.items():
        found += unlisted(item, fields, f"{path}.{key}")
    return found


def _brief(value: object) -> str:
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def is_compact_json(text: str) -> bool:
    """Whether TEXT has no whitespace outside its JSON strings (what `model_dump_json` writes)."""
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char.isspace():
            return False
    return True


def sse_events(raw: bytes) -> tuple[list[str], list[str]]:
    """The `data:` payloads of a complete SSE body, and the FRAMING_RULES it breaks."""
    text = raw.decode()
    broken: list[str] = []
    if "\r" in text:
        broken.append("sse-lf-only")
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    blocks = text.split("\n\n")
    if blocks[-1] != "" or any(block == "" for block in blocks[:-1]):
        broken.append("sse-blank-line")
    blocks = [block for block in blocks if block]
    if any("\n" in block or not block.startswith("data: ") for block in blocks):
        broken.append("sse-data-only")
    payloads = [block.removeprefix("data: ") for block in blocks]
    if not payloads or payloads[-1] != DONE or payloads.count(DONE) != 1:
        broken.append("sse-done-last")
    if not all(is_compact_json(payload) for payload in payloads if payload != DONE):
        broken.append("sse-compact-json")
    return payloads, broken


def chunks_of(payloads: Sequence[str]) -> list[dict[str, object]]:
    """The JSON chunks of a stream's payloads, [DONE] left out."""
    return [json.loads(payload) for payload in payloads if payload != DONE]


def chunk_kind(chunk: dict[str, object]) -> str:
    """ "usage" (no choices), "finish" (a finish_reason), "role" (a role delta) or "content"."""
    choices = chunk["choices"]
    assert isinstance(choices, list)
    if not choices:
        return "usage"
    choice = choices[0]
    if choice.get("finish_reason") is not None:
        return "finish"
    if "role" in choice.get("delta", {}):
        return "role"
    return "content"


def kinds(chunks: Sequence[dict[str, object]]) -> list[str]:
    """The kinds of CHUNKS in order, each run of content chunks counted once."""
    found: list[str] = []
    for chunk in chunks:
        kind = chunk_kind(chunk)
        if not (kind == "content" and found and found[-1] == "content"):
            found.append(kind)
    return found


def generating_events(chunks: Sequence[dict[str, object]]) -> int:
    """How many of CHUNKS carry generated text or its end: content and finish chunks."""
    return sum(chunk_kind(chunk) in ("content", "finish") for chunk in chunks)


def shapes_by_kind(chunks: Sequence[dict[str, object]]) -> dict[str, object]:
    """The shape of each kind of chunk; a kind whose chunks differ in shape maps to them all."""
    seen: dict[str, list[object]] = {}
    for chunk in chunks:
        found = seen.setdefault(chunk_kind(chunk), [])
        if shape(chunk) not in found:
            found.append(shape(chunk))
    return {kind: found[0] if len(found) == 1 else found for kind, found in seen.items()}
