"""vLLM's error responses, as the simulator raises and renders them.

```
SimError                 -> {"error": {"message", "type", "param", "code"}}
├── BadRequest           400 "BadRequestError": vLLM's own checks, "(parameter=..)" suffix
├── InvalidRequest       400 "Bad Request": FastAPI's request validation, param = error loc
└── ModelNotFound        404 "NotFoundError"
```
"""

from __future__ import annotations

import json
from collections.abc import Sequence

# The OpenAI SDKs pick the exception class from the status; the type string
# only has to read the way vLLM and OpenAI spell it.
_ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    408: "RequestTimeoutError",
    409: "ConflictError",
    413: "RequestEntityTooLargeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    501: "NotImplementedError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}
_NO_VALUE = object()


def error_type(status: int) -> str:
    default = "InternalServerError" if status >= 500 else "BadRequestError"
    return _ERROR_TYPES.get(status, default)


class SimError(Exception):
    """An error answered before the response started, in vLLM's shape."""

    def __init__(
        self, status: int, message: str, param: str | None = None, kind: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind or error_type(status)

    def body(self) -> bytes:
        error = {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.status,
        }
        return json.dumps({"error": error}, separators=(",", ":")).encode()


class BadRequest(SimError):
    """A request vLLM's serving code refuses; naming PARAM (and VALUE) as vLLM 0.32 does."""

    def __init__(self, message: str, param: str | None = None, value: object = _NO_VALUE) -> None:
        if param is not None and value is not _NO_VALUE:
            message = f"{message} (parameter={param}, value={value})"
        elif param is not None:
            message = f"{message} (parameter={param})"
        super().__init__(400, message, param)


class InvalidRequest(SimError):
    """A body FastAPI's validation rejects before vLLM sees it: one message line per error."""

    def __init__(self, lines: Sequence[str], param: str | None) -> None:
        plural = "" if len(lines) == 1 else "s"
        message = f"{len(lines)} validation error{plural}:\n  " + "\n  ".join(lines)
        super().__init__(400, message, param, kind="Bad Request")


def field_error(
    kind: str, loc: str, msg: str, value: object, ctx: dict[str, str] | None = None
) -> InvalidRequest:
    """One pydantic error at LOC (`body.<field>`), printed the way vLLM prints it."""
    error: dict[str, object] = {"type": kind, "loc": loc, "msg": msg, "input": describe(value)}
    if ctx is not None:
        error["ctx"] = ctx
    return InvalidRequest([str(error)], loc)


def describe(value: object) -> str:
    """vLLM's summary of an offending input: containers by size, anything else as text."""
    if isinstance(value, dict):
        return f"<dict of {len(value)} items>"
    if isinstance(value, list):
        return f"<list of {len(value)} items>"
    return str(value)


class ModelNotFound(SimError):
    """An unknown `model`; chat and completions list the served name, embeddings do not."""

    def __init__(self, model: str, served: str | None = None) -> None:
        if served is None:
            super().__init__(404, f"The model `{model}` does not exist.")
        else:
            message = f"The model `{model}` does not exist. Valid aliases: {served}."
            super().__init__(404, message, param="model")
