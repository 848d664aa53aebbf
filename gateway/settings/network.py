"""Where the gateway listens and how it talks TLS and times out."""

from __future__ import annotations

from pathlib import Path

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from gateway.settings.base import _Strict


class TLSSettings(_Strict):
    """HTTPS on the gateway's listener; `client_ca` turns on client-certificate checks."""

    certfile: Path | None = None
    keyfile: Path | None = None
    client_ca: Path | None = None

    @model_validator(mode="after")
    def _complete(self) -> TLSSettings:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile must be set together")
        if self.client_ca is not None and self.certfile is None:
            raise ValueError("client_ca needs certfile and keyfile")
        for path in (self.certfile, self.keyfile, self.client_ca):
            if path is not None and not path.is_file():
                raise ValueError(f"file not found: {path}")
        return self

    @property
    def enabled(self) -> bool:
        return self.certfile is not None


class ListenSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    tls: TLSSettings = TLSSettings()


class EdgeSettings(_Strict):
    """HTTP limits on every listener (client and admin), enforced before any routing.

    A request line over `max_url_bytes` is answered 414, a header section over
    `max_header_bytes` or `max_headers` 431; a head not complete `header_timeout`
    seconds after the connection opened (or, on a kept-alive one, after its first
    byte) 408, a body not complete `body_timeout` seconds after it began 408.
    `max_connections` is per listener in each process; one more is answered 503.
    """

    max_url_bytes: int = Field(default=8 * 1024, ge=256, le=1024 * 1024)
    max_header_bytes: int = Field(default=32 * 1024, ge=1024, le=1024 * 1024)
    max_headers: int = Field(default=100, ge=8, le=10_000)
    header_timeout: float = Field(default=10.0, gt=0, le=600)
    body_timeout: float = Field(default=60.0, gt=0, le=3600)
    keep_alive_timeout: int = Field(default=20, ge=1, le=3600)
    max_connections: int = Field(default=10_000, ge=1, le=1_000_000)


class TimeoutSettings(_Strict):
    """Seconds. `first_byte` covers a whole non-streamed generation, so it is long."""

    connect: float = Field(default=5.0, gt=0)
    first_byte: float = Field(default=300.0, gt=0)
    idle: float = Field(default=120.0, gt=0)
    # A client that stops reading: how long one write to it may wait before the
    # gateway ends the request (never blamed on the replica).
    client_write: float = Field(default=30.0, gt=0)


class UpstreamTLSSettings(_Strict):
    ca_bundle: Path | None = None
    verify: bool = True

    @field_validator("ca_bundle")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file not found: {value}")
        return value
