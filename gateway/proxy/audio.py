"""The audio routes (`/v1/audio/transcriptions`, `/v1/audio/translations`): a form upload in,
vLLM's speech-to-text answer out.

The body is multipart/form-data, read by `multipart` under its own size
limit (`max_upload_bytes`, 25 MB by default, as OpenAI's), and forwarded
byte for byte: the gateway never rewrites a form. What it reads:

- `model`, a non-empty text field: the route is chosen by it;
- `max_completion_tokens`, when given, plain decimal digits: with a key's
  `max_tokens` cap it must be given and within the cap (the form cannot be
  clamped, so a request over the cap is refused whatever `max_tokens_policy`
  says); it is the completion reservation, `default_completion_reserve`
  otherwise;
- the reservation's prompt side is an estimate from the upload's size, one
  token per AUDIO_BYTES_PER_TOKEN bytes (about 10 tokens a second of 128
  kbit/s audio, generous for compressed formats).

Usage: a stream whose form asked for `stream_include_usage` carries vLLM's
token usage in its last event, which is recorded. vLLM's non-streamed
transcription reports `usage: {"type": "duration", "seconds": N}`, audio
seconds rather than tokens, and a translation reports none: those answers
are charged their reservation, recorded as estimated (the
`gateway_usage_estimated_total` counter counts them).
"""

from __future__ import annotations

from typing import Any

from gateway.asgi import RawHeaders
from gateway.errors import InvalidRequest
from gateway.proxy.headers import header_value
from gateway.proxy.multipart import MalformedForm, boundary_of, read_form
from gateway.proxy.request_edit import EditedRequest, TokenPolicy

AUDIO_BYTES_PER_TOKEN = 1600
_MAX_DIGITS = 9


def parse_upload(body: bytes, headers: RawHeaders) -> tuple[dict[str, Any], str]:
    """The form's text fields and its `model`; InvalidRequest for anything malformed."""
    try:
        form = read_form(body, boundary_of(header_value(headers, b"content-type") or b""))
    except MalformedForm as exc:
        raise InvalidRequest(str(exc)) from exc
    model = form.fields.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter.", param="model")
    if not model:
        raise InvalidRequest("The model parameter must be a non-empty string.", param="model")
    if "file" not in form.files:
        raise InvalidRequest("The form has no 'file' part with the audio.", param="file")
    return dict(form.fields), model


def edit_upload(fields: dict[str, Any], body: bytes, policy: TokenPolicy) -> EditedRequest:
    """What to reserve for an audio request; BODY goes upstream unchanged."""
    name = "max_completion_tokens"
    given = fields.get(name)
    limit: int | None = None
    if given is not None:
        if not (given.isascii() and given.isdigit() and len(given) <= _MAX_DIGITS):
            raise InvalidRequest(f"'{name}' must be a positive integer.", param=name)
        limit = int(given)
        if limit < 1:
            raise InvalidRequest(f"'{name}' must be a positive integer.", param=name)
    cap = policy.cap
    if cap is not None and (limit is None or limit > cap):
        raise InvalidRequest(
            f"This API key allows at most {cap} tokens per answer: send {name} "
            f"(at most {cap}) with an audio request.",
            param=name,
        )
    reserve = policy.default_reserve if limit is None else limit
    return EditedRequest(body, False, len(body) // AUDIO_BYTES_PER_TOKEN + 1, reserve)
