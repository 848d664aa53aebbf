"""vLLM's pooling routes as an embedding (bi-encoder) model serves them: rerank, score, v2 embed.

Shapes follow vLLM 0.32 (vllm/entrypoints/pooling/scoring and embed): a
score is the cosine similarity of the two texts' stand-in embeddings
(`embeddings.embed`), as a bi-encoder's is. Rerank sorts by relevance and
keeps `top_n`; its usage is `{prompt_tokens, total_tokens}`. Score's is the
full usage object with `completion_tokens: 0`. Cohere's v2 embed reports
`meta.billed_units.input_tokens`. Every input is encoded once (query and
documents alike), so prompt tokens are the sum over all of them. Bodies are
Starlette's JSONResponse rendering: compact, non-ASCII written as UTF-8.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from gateway.sim.config import SimConfig
from gateway.sim.embeddings import embed
from gateway.sim.engine import Engine
from gateway.sim.errors import BadRequest, field_error
from gateway.sim.generate import Call
from gateway.sim.protocol import Identity
from gateway.sim.requests import check_model
from gateway.sim.text import count_tokens

_PAIRS = (
    ("queries", "documents"),
    ("queries", "items"),
    ("data_1", "data_2"),
    ("text_1", "text_2"),
)


def render(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Scored:
    """Each scored pair's score, and the prompt tokens of every input encoded."""

    scores: list[float]
    prompt_tokens: int


class PoolingGenerator:
    """The pooling endpoints over one engine and one configuration."""

    def __init__(self, config: SimConfig, engine: Engine) -> None:
        self._config = config
        self._engine = engine

    async def rerank(self, call: Call, payload: dict[str, object]) -> None:
        query = _input(_required(payload, "query"), "query")
        documents = _inputs(_required(payload, "documents"), "documents")
        top_n = payload.get("top_n", 0)
        if not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 0:
            raise field_error("greater_than_equal", "body.top_n", "Input should be >= 0", top_n)
        check_model(payload, self._config.model, listed=False)
        scored = self._score([query], documents)
        ranked = sorted(enumerate(scored.scores), key=lambda item: item[1], reverse=True)
        if 0 < top_n < len(documents):
            ranked = ranked[:top_n]
        results = [
            {"index": index, "document": _document(documents[index]), "relevance_score": score}
            for index, score in ranked
        ]
        ident = self._identity("score", call)
        tokens = scored.prompt_tokens
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        body = {"id": ident.id, "model": ident.model, "usage": usage, "results": results}
        await self._answer(call, tokens, render(body))

    async def score(self, call: Call, payload: dict[str, object]) -> None:
        pair = next((p for p in _PAIRS if p[0] in payload and p[1] in payload), None)
        if pair is None:
            raise field_error("missing", "body.text_1", "Field required", payload)
        firsts = _inputs(payload[pair[0]], pair[0])
        seconds = _inputs(payload[pair[1]], pair[1])
        if len(firsts) != 1 and len(firsts) != len(seconds):
            raise BadRequest("Input lengths must be either 1:1, 1:N or N:N")
        check_model(payload, self._config.model, listed=False)
        scored = self._score(firsts, seconds)
        ident = self._identity("score", call)
        data = [
            {"index": index, "object": "score", "score": score}
            for index, score in enumerate(scored.scores)
        ]
        body = {
            "id": ident.id,
            "object": "list",
            "created": ident.created,
            "model": ident.model,
            "data": data,
            "usage": _score_usage(scored.prompt_tokens),
        }
        await self._answer(call, scored.prompt_tokens, render(body))

    async def embed_v2(self, call: Call, payload: dict[str, object]) -> None:
        given = [name for name in ("texts", "images", "inputs") if payload.get(name) is not None]
        if given != ["texts"] or not isinstance(payload["texts"], list) or not payload["texts"]:
            raise BadRequest(
                "The simulator embeds texts only: give exactly one non-empty 'texts' array"
            )
        texts = [_input(text, "texts") for text in payload["texts"]]
        if payload.get("embedding_types") not in (None, ["float"]):
            raise BadRequest("The simulator supports only the 'float' embedding type")
        check_model(payload, self._config.model, listed=False)
        dim = self._config.embedding_dim
        tokens = sum(max(count_tokens(text), 1) for text in texts)
        ident = self._identity("embd", call)
        body = {
            "id": ident.id,
            "embeddings": {"float": [list(embed(text, dim)) for text in texts]},
            "texts": texts,
            "meta": {
                "api_version": {"version": "2"},
                "billed_units": {"input_tokens": tokens, "image_tokens": 0},
            },
            "response_type": "embeddings_by_type",
        }
        await self._answer(call, tokens, render(body))

    def _score(self, firsts: list[str], seconds: list[str]) -> Scored:
        dim = self._config.embedding_dim
        lefts = firsts * len(seconds) if len(firsts) == 1 else firsts
        scores = [
            sum(a * b for a, b in zip(embed(left, dim), embed(right, dim), strict=True))
            for left, right in zip(lefts, seconds, strict=True)
        ]
        tokens = sum(max(count_tokens(text), 1) for text in [*firsts, *seconds])
        return Scored(scores, tokens)

    async def _answer(self, call: Call, prompt_tokens: int, body: bytes) -> None:
        knobs = call.knobs
        sequence = self._engine.sequence(prompt_tokens, knobs.ttft_ms, knobs.itl_ms, call.arrival)
        async with sequence:
            await sequence.pool()
            if knobs.drop_after is not None:
                raise call.exchange.drop()
            sequence.finish("stop")
            await call.exchange.respond(200, body)

    def _identity(self, prefix: str, call: Call) -> Identity:
        config = self._config
        return Identity.mint(prefix, config.model, call.request_id, config.deterministic)


def _required(payload: dict[str, object], name: str) -> object:
    if name not in payload:
        raise field_error("missing", f"body.{name}", "Field required", payload)
    return payload[name]


def _inputs(value: object, name: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise BadRequest(f"At least one {name} input is required")
    return [_input(item, name) for item in items]


def _input(value: object, name: str) -> str:
    """A text input; the simulator has no multimodal scoring."""
    if isinstance(value, str):
        return value
    raise field_error("string_type", f"body.{name}", "Input should be a valid string", value)


def _document(text: str) -> dict[str, object]:
    return {"text": text, "multi_modal": None}


def _score_usage(tokens: int) -> dict[str, object]:
    # vLLM's UsageInfo in its field order: prompt, total, then completion tokens.
    return {
        "prompt_tokens": tokens,
        "total_tokens": tokens,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }
