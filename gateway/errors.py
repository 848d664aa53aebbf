"""Errors the gateway answers itself, each rendered in OpenAI's error shape.

    GatewayError
    ├── RequestError            4xx: the client's request cannot be served
    │   ├── RouteNotFound           404  path not on the allowlist
    │   ├── MethodNotAllowed        405
    │   ├── InvalidRequest          400  malformed JSON, missing model, a field of the wrong type
    │   │   └── BatchTooLarge            more prompts x choices than the key allows
    │   ├── ModelNotFound           404  no such model here
    │   ├── PermissionDenied        403  the caller may not use this model
    │   ├── RequestTimeout          408  the request's head or body came too slowly
    │   ├── PayloadTooLarge         413
    │   ├── URITooLong              414  request line over the edge limit
    │   ├── ModelBusy               429  every replica's queue is full (shedding)
    │   └── HeadersTooLarge         431  header section over the edge limit
    ├── TooManyConnections      503  this listener holds its maximum of connections
    ├── ShuttingDown            503  the drain's grace ended before the answer started
    └── UpstreamError           5xx: no usable answer from a replica
        ├── UpstreamUnreachable     502  connect error, reset, bad credentials
        │   └── ReplicaConnectFailed     the connection never opened *
        ├── NoHealthyReplica        503
        ├── ModelOverloaded         503  every replica's queue is full (shedding)
        ├── ReplicaBusy             503  vLLM refused for its own full queue *
        └── UpstreamTimeout         504  connect or first-byte timeout
            └── ReplicaConnectTimeout    the connection never opened *

* the request provably never reached an engine, so another replica may take it.

OpenAI SDKs pick the exception class from the status (NotFoundError,
BadRequestError, APIStatusError, ...), so the status is the contract; the body
says what happened in words a client can act on, and never carries a secret.
"""

from __future__ import annotations

import json
from typing import ClassVar


class GatewayError(Exception):
    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None

    def __init__(
        self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.message, self.error_type, self.param, self.code)


class RequestError(GatewayError):
    status = 400
    error_type = "invalid_request_error"


class RouteNotFound(RequestError):
    status = 404
    code = "not_found"


class MethodNotAllowed(RequestError):
    status = 405
    code = "method_not_allowed"


class InvalidRequest(RequestError):
    status = 400
    code = "invalid_request"


class BatchTooLarge(InvalidRequest):
    code = "batch_too_large"


class ModelNotFound(RequestError):
    status = 404
    code = "model_not_found"


class PermissionDenied(RequestError):
    status = 403
    code = "model_not_allowed"


class PayloadTooLarge(RequestError):
    status = 413
    code = "request_too_large"


class RequestTimeout(RequestError):
    status = 408
    code = "request_timeout"


class URITooLong(RequestError):
    status = 414
    code = "url_too_long"


class HeadersTooLarge(RequestError):
    status = 431
    code = "headers_too_large"


class TooManyConnections(GatewayError):
    status = 503
    error_type = "overloaded"
    code = "too_many_connections"


class ShuttingDown(GatewayError):
    status = 503
    code = "shutting_down"


class ModelBusy(RequestError):
    status = 429
    error_type = "overloaded"
    code = "model_overloaded"


class UpstreamError(GatewayError):
    status = 502
    error_type = "upstream_error"
    # True when the request provably never reached an engine: it may go to another replica.
    never_reached: ClassVar[bool] = False


class UpstreamUnreachable(UpstreamError):
    status = 502
    code = "upstream_unreachable"


class ReplicaConnectFailed(UpstreamUnreachable):
    never_reached = True


class NoHealthyReplica(UpstreamError):
    status = 503
    code = "no_healthy_replica"


class ModelOverloaded(UpstreamError):
    status = 503
    error_type = "overloaded"
    code = "model_overloaded"


class ReplicaBusy(UpstreamError):
    status = 503
    code = "replica_busy"
    never_reached = True


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class ReplicaConnectTimeout(UpstreamTimeout):
    never_reached = True


def error_body(message: str, error_type: str, param: str | None, code: str | int | None) -> bytes:
    payload = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return json.dumps(payload, separators=(",", ":")).encode()


def stream_error_event(error: GatewayError) -> bytes:
    """The one event that ends a stream that failed after its 200 was sent.

    vLLM frames its own mid-stream failures the same way: an `error` event,
    then `[DONE]`; OpenAI SDKs raise APIError when they read it.
    """
    payload = error_body(error.message, error.error_type, None, error.status)
    return b"data: " + payload + b"\n\ndata: [DONE]\n\n"
