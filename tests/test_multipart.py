"""The strict multipart/form-data reader of the audio routes, and v2 embed's usage reader."""

from __future__ import annotations

import json

import httpx
import pytest

from gateway.proxy.multipart import MAX_FIELD, MalformedForm, boundary_of, read_form
from gateway.proxy.pooling import CohereBodyUsage
from gateway.usage.records import TokenUsage


def part(name: bytes, content: bytes, extra: bytes = b"") -> bytes:
    return (
        b'--b0\r\nContent-Disposition: form-data; name="'
        + name
        + b'"'
        + extra
        + b"\r\n\r\n"
        + content
        + b"\r\n"
    )


def test_what_http_clients_write_is_read() -> None:
    request = httpx.Request(
        "POST",
        "http://x/",
        data={"model": "caf\u00e9", "stream": "true"},
        files={"file": ("a.wav", b"RIFF\r\n--not-the-boundary", "audio/wav")},
    )
    body = request.read()
    form = read_form(body, boundary_of(request.headers["content-type"].encode()))
    assert form.fields == {"model": "caf\u00e9", "stream": "true"}
    assert form.files == ["file"]


@pytest.mark.parametrize(
    "content_type",
    [
        b'multipart/form-data; boundary="b0"',
        b"Multipart/Form-Data;boundary=b0",
        b"multipart/form-data; charset=utf-8; boundary=b0",
    ],
)
def test_boundary_spellings(content_type: bytes) -> None:
    assert boundary_of(content_type) == b"b0"


@pytest.mark.parametrize(
    "content_type",
    [
        b"multipart/mixed; boundary=b0",
        b"multipart/form-data; boundary=" + b"x" * 71,
        b"multipart/form-data; boundary=a b",
        b"multipart/form-data; boundary",
        b"multipart/form-data; boundary=b0;",
    ],
)
def test_bad_content_types_are_refused(content_type: bytes) -> None:
    with pytest.raises(MalformedForm):
        boundary_of(content_type)


@pytest.mark.parametrize(
    "body",
    [
        b"preamble\r\n" + part(b"model", b"m") + b"--b0--",
        part(b"model", b"m") + b"--b0--\r\nepilogue",
        b"--b0\r\nContent-Disposition form-data\r\n\r\nx\r\n--b0--",
        b'--b0\r\n Content-Disposition: form-data; name="m"\r\n\r\nx\r\n--b0--',
        b"--b0\r\nContent-Type: text/plain\r\n\r\nx\r\n--b0--",
        b"--b0\r\nContent-Disposition: form-data; name=a\r\nContent-Disposition: "
        b"form-data; name=b\r\n\r\nx\r\n--b0--",
        b'--b0\r\nContent-Disposition: attachment; name="m"\r\n\r\nx\r\n--b0--',
        b'--b0\r\nContent-Disposition: form-data; name="m"; name="n"\r\n\r\nx\r\n--b0--',
        b'--b0\r\nContent-Disposition: form-data; name="m"',
        part(b"\xff", b"m") + b"--b0--",
        part(b"model", b"\xff") + b"--b0--",
        part(b"model", b"x" * (MAX_FIELD + 1)) + b"--b0--",
        part(b"model", b"m") + b"--b0--\r\n" + part(b"model", b"n") + b"--b0--",
        part(b"model", b"m\r\n--b0Z") + b"--b0--",
    ],
)
def test_malformed_forms_are_refused(body: bytes) -> None:
    with pytest.raises(MalformedForm):
        read_form(body, b"b0")


def test_a_file_part_may_be_any_size_and_a_field_its_own() -> None:
    body = part(b"file", b"\x00" * (MAX_FIELD * 4), b'; filename="a.wav"')
    form = read_form(body + part(b"f", b"x" * MAX_FIELD) + b"--b0--", b"b0")
    assert form.files == ["file"] and form.fields == {"f": "x" * MAX_FIELD}


def embed_answer(texts: int, units: dict[str, object]) -> bytes:
    answer = {
        "id": "embd-1",
        "embeddings": {"float": [[0.25] * 384] * texts},
        "texts": ['"meta": {"billed_units": {"input_tokens": 999}}'] * texts,
        "meta": {"api_version": {"version": "2"}, "billed_units": units},
        "response_type": "embeddings_by_type",
    }
    return json.dumps(answer, separators=(",", ":")).encode()


@pytest.mark.parametrize("texts", [1, 700])  # a small body, and one read from its tail
def test_v2_embed_usage_is_its_billed_units(texts: int) -> None:
    body = embed_answer(texts, {"input_tokens": 7, "image_tokens": 2})
    reader = CohereBodyUsage()
    for start in range(0, len(body), 4096):
        reader.feed(body[start : start + 4096])
    assert reader.usage() == TokenUsage(9, 0)


@pytest.mark.parametrize("units", [{"input_tokens": -1}, {"input_tokens": "7"}, None])
def test_v2_embed_without_valid_units_has_no_usage(units: dict[str, object] | None) -> None:
    body = embed_answer(1, units or {})
    if units is None:
        body = body.replace(b'"billed_units":{}', b'"billed_units":null')
    reader = CohereBodyUsage()
    reader.feed(body)
    assert reader.usage() is None
