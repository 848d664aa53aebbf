"""Request fields read with pydantic's lax rules, failing with FastAPI's validation errors.

vLLM's request models are pydantic models validated by FastAPI, so `"5"` is a
fine `max_tokens` and `"yes"` a fine `stream`, while `1.5` and `"maybe"` are
rejected as "Bad Request" with the field as `param`. The simulator reads only
the fields it acts on; unknown fields are ignored, as pydantic ignores them.
"""

from __future__ import annotations

import json

from gateway.sim.errors import InvalidRequest, field_error

_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no"}


def decode_object(body: bytes) -> dict[str, object]:
    """BODY as a JSON object, or the error FastAPI gives for it."""
    try:
        payload = json.loads(body)
    except UnicodeDecodeError as exc:
        raise field_error("json_invalid", "body.0", "JSON decode error", {}) from exc
    except json.JSONDecodeError as exc:
        # FastAPI reports the character position as the error's location.
        ctx = {"error": exc.msg}
        raise field_error("json_invalid", f"body.{exc.pos}", "JSON decode error", {}, ctx) from exc
    if not isinstance(payload, dict):
        msg = "Input should be a valid dictionary or object to extract fields from"
        raise field_error("model_attributes_type", "body", msg, payload)
    return payload


def required(payload: dict[str, object], name: str) -> object:
    if name not in payload:
        raise field_error("missing", f"body.{name}", "Field required", payload)
    return payload[name]


def optional_int(payload: dict[str, object], name: str) -> int | None:
    value = payload.get(name)
    loc = f"body.{name}"
    if value is None or isinstance(value, int):
        return None if value is None else int(value)
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        msg = "Input should be a valid integer, got a number with a fractional part"
        raise field_error("int_from_float", loc, msg, value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            msg = "Input should be a valid integer, unable to parse string as an integer"
            raise field_error("int_parsing", loc, msg, value) from None
    raise field_error("int_type", loc, "Input should be a valid integer", value)


def optional_float(payload: dict[str, object], name: str) -> float | None:
    value = payload.get(name)
    loc = f"body.{name}"
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            msg = "Input should be a valid number, unable to parse string as a number"
            raise field_error("float_parsing", loc, msg, value) from None
    raise field_error("float_type", loc, "Input should be a valid number", value)


def optional_bool(payload: dict[str, object], name: str) -> bool:
    value = payload.get(name)
    loc = f"body.{name}"
    if value is None or isinstance(value, bool):
        return value is True
    if isinstance(value, int | float) and value in (0, 1):
        return value == 1
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, str):
        msg = "Input should be a valid boolean, unable to interpret input"
        raise field_error("bool_parsing", loc, msg, value)
    raise field_error("bool_type", loc, "Input should be a valid boolean", value)


def list_field(payload: dict[str, object], name: str) -> list[object]:
    value = required(payload, name)
    if not isinstance(value, list):
        raise field_error("list_type", f"body.{name}", "Input should be a valid list", value)
    return value


def unsupported_media_type() -> InvalidRequest:
    return InvalidRequest(["Unsupported Media Type: Only 'application/json' is allowed"], None)
