"""vLLM's speech-to-text routes, as a Whisper-like model serves them: transcriptions, translations.

The request is a multipart/form-data form (read here with the standard
library's MIME parser, independently of the gateway's own reader) with a
`file` part and text fields, validated as vLLM 0.32's form model does
(vllm/entrypoints/speech_to_text): `stream`, `stream_include_usage` and
`stream_continuous_usage_stats` are lax booleans, stream options need
`stream=true`, only `response_format=json` is simulated.

The "audio" is any bytes: it lasts ceil(len / 32,000) seconds (16 kHz 16-bit
mono PCM); the reply is 8 stand-in words (fewer under
`max_completion_tokens`) plus an end-of-sequence token; the prompt is 4
tokens (Whisper's decoder prompt). Answers, as vLLM's:

- transcription: `{"text", "usage": {"type": "duration", "seconds"}}`;
- translation: `{"text"}`, no usage;
- streamed: `data:` events of `transcription.chunk` / `translation.chunk`,
  the last with `finish_reason`, then (with `stream_include_usage`) a usage
  event with `"choices": []`, then `data: [DONE]`.
"""

from __future__ import annotations

import json
import math
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

from gateway.sim.config import SimConfig
from gateway.sim.engine import Engine, Sequence
from gateway.sim.errors import BadRequest, field_error
from gateway.sim.exchange import Headers
from gateway.sim.fields import optional_bool, optional_int
from gateway.sim.generate import Call
from gateway.sim.protocol import Identity, usage
from gateway.sim.requests import check_model
from gateway.sim.stream import DONE, event
from gateway.sim.text import WORDS, seed_of, word_index

PCM_BYTES_PER_SECOND = 32_000
PROMPT_TOKENS = 4
WORDS_PER_ANSWER = 8


def decode_form(headers: Headers, body: bytes) -> dict[str, object]:
    """The form's text fields by name, and its `file` part's bytes; FastAPI's 400 without one."""
    content_type = headers.get(b"content-type", b"")
    fields: dict[str, object] = {}
    if content_type.lower().startswith(b"multipart/form-data"):
        head = b"Content-Type: " + content_type + b"\r\n\r\n"
        message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
        if isinstance(message, EmailMessage) and message.is_multipart():
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                data = part.get_payload(decode=True)
                if not isinstance(name, str) or not isinstance(data, bytes):
                    continue
                is_file = part.get_filename() is not None
                fields[name] = data if is_file else data.decode("utf-8", "replace")
    if not isinstance(fields.get("file"), bytes):
        raise field_error("missing", "body.file", "Field required", None)
    return fields


class SpeechGenerator:
    """The two speech-to-text endpoints over one engine and one configuration."""

    def __init__(self, config: SimConfig, engine: Engine) -> None:
        self._config = config
        self._engine = engine

    async def transcription(self, call: Call, form: dict[str, object]) -> None:
        await self._speech(call, form, "transcribe")

    async def translation(self, call: Call, form: dict[str, object]) -> None:
        await self._speech(call, form, "translate")

    async def _speech(self, call: Call, form: dict[str, object], task: str) -> None:
        audio = form["file"]
        assert isinstance(audio, bytes)
        stream = optional_bool(form, "stream")
        include_usage = optional_bool(form, "stream_include_usage")
        if (include_usage or optional_bool(form, "stream_continuous_usage_stats")) and not stream:
            raise BadRequest(
                "Stream options can only be defined when `stream=True`.",
                param="stream_include_usage",
            )
        if form.get("response_format", "json") != "json":
            raise BadRequest("The simulator supports only response_format `json`")
        limit = optional_int(form, "max_completion_tokens")
        check_model(form, self._config.model, listed=False)
        words = WORDS_PER_ANSWER if limit is None else min(limit - 1, WORDS_PER_ANSWER)
        if words < 0:
            raise BadRequest("max_completion_tokens must be at least 1")
        seed = seed_of(audio.hex()[:4096])
        texts = [" " + WORDS[word_index(seed, i)] for i in range(words)]
        knobs = call.knobs
        sequence = self._engine.sequence(PROMPT_TOKENS, knobs.ttft_ms, knobs.itl_ms, call.arrival)
        if stream:
            config = self._config
            ident = Identity.mint(task, config.model, call.request_id, config.deterministic)
            await self._stream(call, sequence, ident, texts, include_usage)
            return
        async with sequence:
            for _ in range(words + 1):
                await sequence.next_token()
            sequence.finish("stop")
            answer: dict[str, object] = {"text": "".join(texts)}
            if task == "transcribe":
                seconds = math.ceil(len(audio) / PCM_BYTES_PER_SECOND)
                answer["usage"] = {"type": "duration", "seconds": seconds}
            body = json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode()
            await call.exchange.respond(200, body)

    async def _stream(
        self, call: Call, sequence: Sequence, ident: Identity, texts: list[str], with_usage: bool
    ) -> None:
        exchange = call.exchange
        kind = "transcription.chunk" if ident.id.startswith("transcribe") else "translation.chunk"
        head = {"id": ident.id, "object": kind, "created": ident.created, "model": ident.model}
        await exchange.start_stream()
        async with sequence:
            for text in texts:
                await sequence.next_token()
                await exchange.send_event(
                    event({**head, "choices": [{"delta": {"content": text}}]})
                )
            await sequence.next_token()
            last = {"delta": {"content": ""}, "finish_reason": "stop", "stop_reason": None}
            await exchange.send_event(event({**head, "choices": [last]}))
            sequence.finish("stop")
            if with_usage:
                counted = usage(PROMPT_TOKENS, len(texts) + 1)
                await exchange.send_event(event({**head, "choices": [], "usage": counted}))
            await exchange.end_stream(DONE)
