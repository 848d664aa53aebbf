"""The 401 every authentication failure becomes, whatever the credential."""

from __future__ import annotations

from typing import ClassVar

from gateway.errors import GatewayError


class AuthError(GatewayError):
    status = 401
    error_type = "invalid_request_error"
    code: ClassVar[str | None] = "invalid_token"
    default_reason: ClassVar[str] = "invalid"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        self.reason = reason or self.default_reason
