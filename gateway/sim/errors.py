"""vLLM's error responses, as the simulator raises and renders them.

```
SimError                 -> {"error": {"message", "type", "param", "code"}}
├── BadRequest           400 BadRequestError, param null
└── ModelNotFound        404 NotFoundError, param "model"
```
"""

from __future__ import annotations

import json

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


def error_type(status: int) -> str:
    default = "InternalServerError" if status >= 500 else "BadRequestError"
    return _ERROR_TYPES.get(status, default)


class SimError(Exception):
    """An error answered before the response started, in vLLM's shape."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def body(self) -> bytes:
        error = {
            "message": self.message,
            "type": error_type(self.status),
            "param": self.param,
            "code": self.status,
        }
        return json.dumps({"error": error}, separators=(",", ":")).encode()


class BadRequest(SimError):
    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class ModelNotFound(SimError):
    def __init__(self, model: str) -> None:
        super().__init__(404, f"The model `{model}` does not exist.", param="model")
