"""A small, strict reader of multipart/form-data bodies (RFC 7578), for the audio routes.

The gateway reads only a form's text fields (`model`, a few numbers); the
uploaded file passes through untouched, as does the whole body, which is
forwarded byte for byte. Being strict costs clients nothing (every HTTP
library writes what is accepted here) and keeps the gateway and vLLM's
parser (python-multipart) from reading one body two ways:

- the content type names a boundary of 1 to 70 characters (RFC 2046);
- the body starts with the first delimiter (no preamble) and ends with the
  close delimiter, then at most one CRLF;
- each part has CRLF-ended headers and a `Content-Disposition: form-data`
  with a quoted `name`; at most MAX_PARTS parts, MAX_PART_HEAD bytes of
  headers each, MAX_FIELD bytes in a text field (a part without `filename`);
- a field name appears once: a repeated `model` could route to one model
  and be served by another.

Anything else is `MalformedForm`, which the caller turns into a 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_PARTS = 32
MAX_PART_HEAD = 4096
MAX_FIELD = 8192

# RFC 2046 bchars, less the space: a boundary ending in a space is legal but no client
# writes one, and quoting rules around it differ between parsers.
_BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,\-./:=?]{1,70}")
_PARAM = re.compile(rb';\s*([A-Za-z0-9_*-]+)\s*=\s*("(?:[^"\\\r\n]|\\.)*"|[^;\s"]+)')


class MalformedForm(Exception):
    """The body is not a multipart/form-data body this gateway accepts; says why."""


@dataclass(frozen=True, slots=True)
class Form:
    """A form's text fields by name, and the names of its file parts."""

    fields: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def boundary_of(content_type: bytes) -> bytes:
    """The boundary a `multipart/form-data` content type names."""
    kind, _, params = content_type.partition(b";")
    if kind.strip().lower() != b"multipart/form-data":
        raise MalformedForm("The content type must be multipart/form-data.")
    found = _params(b";" + params)
    boundary = found.get("boundary")
    if boundary is None:
        raise MalformedForm("The multipart/form-data content type names no boundary.")
    if not _BOUNDARY.fullmatch(boundary):
        raise MalformedForm("The multipart boundary must be 1 to 70 plain characters.")
    return boundary


def read_form(body: bytes, boundary: bytes) -> Form:
    """The parts of BODY, a form delimited by BOUNDARY."""
    opening = b"--" + boundary + b"\r\n"
    closing = b"\r\n--" + boundary + b"--"
    if not body.startswith(opening):
        raise MalformedForm("The multipart body does not start with its boundary.")
    end = body.rfind(closing)
    if end < 0 or body[end + len(closing) :] not in (b"", b"\r\n"):
        raise MalformedForm("The multipart body does not end with its closing boundary.")
    delimiter = b"\r\n--" + boundary
    parts = body[len(opening) : end].split(delimiter + b"\r\n")
    if len(parts) > MAX_PARTS:
        raise MalformedForm(f"The multipart body has more than {MAX_PARTS} parts.")
    if body.count(delimiter) != len(parts):
        # The boundary inside a part, or a second close: parsers disagree on what follows.
        raise MalformedForm("The multipart body holds its boundary inside a part.")
    form = Form()
    for part in parts:
        _add_part(form, part)
    return form


def _add_part(form: Form, part: bytes) -> None:
    head_end = part.find(b"\r\n\r\n", 0, MAX_PART_HEAD + 4)
    if head_end < 0:
        raise MalformedForm("A multipart part has no complete header section.")
    disposition: bytes | None = None
    for line in part[:head_end].split(b"\r\n"):
        header, colon, value = line.partition(b":")
        if not colon or not header or header != header.strip():
            raise MalformedForm("A multipart part has a malformed header line.")
        if header.lower() == b"content-disposition":
            if disposition is not None:
                raise MalformedForm("A multipart part has two Content-Disposition headers.")
            disposition = value.strip()
    if disposition is None:
        raise MalformedForm("A multipart part has no Content-Disposition header.")
    kind, _, params = disposition.partition(b";")
    found = _params(b";" + params)
    name = found.get("name")
    if kind.strip().lower() != b"form-data" or name is None:
        raise MalformedForm("A multipart part is not form-data with a name.")
    text_name = _text(name, "name")
    if text_name in form.fields or text_name in form.files:
        raise MalformedForm(f"The form field '{text_name}' is given more than once.")
    content = part[head_end + 4 :]
    if "filename" in found or "filename*" in found:
        form.files.append(text_name)
    elif len(content) > MAX_FIELD:
        raise MalformedForm(f"The form field '{text_name}' is longer than {MAX_FIELD} bytes.")
    else:
        form.fields[text_name] = _text(content, text_name)


def _params(params: bytes) -> dict[str, bytes]:
    """`; key=value` parameters, values unquoted; a repeated or unparsable one is refused."""
    found: dict[str, bytes] = {}
    position = 0
    rest = params.rstrip()
    if rest == b";":
        return found
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if match is None:
            raise MalformedForm("A multipart header has malformed parameters.")
        key = match.group(1).decode("ascii").lower()
        value = match.group(2)
        if value.startswith(b'"'):
            value = re.sub(rb"\\(.)", rb"\1", value[1:-1])
        if key in found:
            raise MalformedForm(f"A multipart header names '{key}' twice.")
        found[key] = value
        position = match.end()
    return found


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedForm(f"The form field '{what}' is not UTF-8 text.") from exc
