"""The request contract of vLLM's pooling routes: rerank, score and Cohere's v2 embed.

These routes generate nothing: a request costs its prompt tokens only, and
asks for one pooled sequence per document. The gateway reads the fields that
say how many (vLLM 0.32's request models, vllm/entrypoints/pooling/):

  route                  items (counted against max_batch)     each item is
  /v1/rerank, /v2/rerank `documents` (with one `query`)        a string or
  /v1/score              the second of one pair: `documents`   {"content": [...]}
                         or `items` (with `queries`), `data_2`
                         (with `data_1`), `text_2` (with
                         `text_1`); a pair scores max(len) items
  /v2/embed              exactly one of `texts` (strings),     as named
                         `images` (strings), `inputs` (objects)

A value of the wrong type, an empty array or (on score) two pairs at once is
refused with 400 naming the field, so vLLM never counts a request otherwise
than the gateway did. `model` is required, as on every route: the gateway
routes by it (vLLM would default it). The body is forwarded as it came; the
reservation is the body's prompt estimate, and usage is read from the answer
(`usage.prompt_tokens` on rerank and score, `meta.billed_units` on v2 embed)
and recorded as prompt tokens.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import BatchTooLarge, InvalidRequest
from gateway.proxy.contract import BYTES_PER_TOKEN, kind_of
from gateway.proxy.request_edit import EditedRequest, TokenPolicy
from gateway.proxy.routes import Route
from gateway.proxy.usage_scan import BodyUsage, is_count
from gateway.usage.records import TokenUsage

# Score's alternative pairs, in the order vLLM's request union tries them.
SCORE_PAIRS = (
    ("queries", "documents"),
    ("queries", "items"),
    ("data_1", "data_2"),
    ("text_1", "text_2"),
)
EMBED_V2_INPUTS = ("texts", "images", "inputs")


def edit_pooling(
    route: Route, payload: dict[str, Any], body: bytes, policy: TokenPolicy
) -> EditedRequest:
    """Check PAYLOAD for ROUTE and its size against the key's max_batch; BODY goes on as it is."""
    if route is Route.SCORE:
        items, param = _score_items(payload)
    elif route is Route.EMBED_V2:
        items, param = _embed_v2_items(payload)
    else:
        _score_input(payload.get("query"), "query", single=True)
        items, param = _score_input(payload.get("documents"), "documents"), "documents"
    limit = policy.max_batch
    if limit is not None and items > limit:
        raise BatchTooLarge(
            f"This request asks for {items} {param}; this API key allows at most {limit} "
            "per request.",
            param=param,
        )
    return EditedRequest(body, False, len(body) // BYTES_PER_TOKEN + 1, 0)


def _score_items(payload: dict[str, Any]) -> tuple[int, str]:
    """Score's one pair of inputs: the items scored and the field that counts them."""
    seconds = [second for _, second in SCORE_PAIRS if second in payload]
    firsts = {first for first, _ in SCORE_PAIRS if first in payload}
    pair = next(((a, b) for a, b in SCORE_PAIRS if seconds == [b] and firsts == {a}), None)
    if pair is None:
        raise InvalidRequest(
            "A score request needs exactly one pair of inputs: 'queries' with 'documents' "
            "or 'items', 'data_1' with 'data_2', or 'text_1' with 'text_2'.",
            param=seconds[-1] if seconds else "documents",
        )
    first, second = pair
    count = max(_score_input(payload[first], first), _score_input(payload[second], second))
    return count, second


def _score_input(value: object, name: str, *, single: bool = False) -> int:
    """How many inputs VALUE holds: a string or a `{"content": [...]}` object is one; an
    array of them (unless SINGLE) is as many."""
    if _is_item(value):
        return 1
    if not single and isinstance(value, list) and value and all(_is_item(v) for v in value):
        return len(value)
    what = "a string or an object with 'content'"
    if not single:
        what += ", or a non-empty array of them"
    raise InvalidRequest(f"'{name}' must be {what}, not {kind_of(value)}.", param=name)


def _is_item(value: object) -> bool:
    return isinstance(value, str) or (
        isinstance(value, dict) and isinstance(value.get("content"), list)
    )


def _embed_v2_items(payload: dict[str, Any]) -> tuple[int, str]:
    given = [name for name in EMBED_V2_INPUTS if payload.get(name) is not None]
    if len(given) != 1:
        raise InvalidRequest(
            "Exactly one of 'texts', 'images' or 'inputs' must be given.",
            param=given[1] if len(given) > 1 else "texts",
        )
    name = given[0]
    value = payload[name]
    kind = dict if name == "inputs" else str
    if not isinstance(value, list) or not value or not all(isinstance(v, kind) for v in value):
        what = "objects" if kind is dict else "strings"
        raise InvalidRequest(
            f"'{name}' must be a non-empty array of {what}, not {kind_of(value)}.", param=name
        )
    return len(value), name


def embed_v2_body_usage() -> BodyUsage:
    """A reader of a v2 embed answer's `meta.billed_units`."""
    return CohereBodyUsage()


class CohereBodyUsage(BodyUsage):
    """Cohere's answer carries its tokens in `meta.billed_units`, last in the body, not in
    `usage`: `input_tokens` plus `image_tokens`, all prompt."""

    def usage(self, reasons: list[str] | None = None) -> TokenUsage | None:
        body = b"".join(self._pieces)
        if self._big:
            start = body.rfind(b'"meta"', len(body) - self._tail)
            if start < 0:
                return None
            body = b"{" + body[start:]
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        meta = value.get("meta") if isinstance(value, dict) else None
        units = meta.get("billed_units") if isinstance(meta, dict) else None
        if not isinstance(units, dict):
            return None
        tokens = [units.get(name, 0) for name in ("input_tokens", "image_tokens")]
        if not all(is_count(count) for count in tokens):
            return None
        return TokenUsage(sum(tokens), 0)
