"""What every settings section shares: strictness, secrets, the env prefix."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    SecretStr,
)

ENV_PREFIX = "VGW_"
ENV_NESTING = "__"

# Values copied from examples and templates; a deployment that still carries one is misconfigured.
PLACEHOLDER_SECRETS = frozenset(
    {"changeme", "change-me", "changethis", "change_me", "replace-me", "secret", "xxx", "todo"}
)


class SettingsError(Exception):
    """Settings that cannot start the gateway; the message names every bad field."""


def _not_placeholder(value: SecretStr | None) -> SecretStr | None:
    if value is not None:
        raw = value.get_secret_value()
        if not raw.strip():
            raise ValueError("must not be empty")
        if raw.strip().lower() in PLACEHOLDER_SECRETS:
            raise ValueError("is a placeholder value; set a real secret")
    return value


Secret = Annotated[SecretStr | None, AfterValidator(_not_placeholder)]


def normalize_upstream_url(value: str) -> str:
    """Accept `host:port`, `http://host[:port][/prefix]` or `https://...`; return a base URL.

    A trailing `/v1` is dropped: operators often paste an OpenAI-style base URL,
    and the gateway appends the request's own `/v1/...` path.
    """
    text = value.strip()
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"scheme must be http or https, not {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("has no host")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query or fragment")
    path = parts.path.rstrip("/")
    path = path.removesuffix("/v1")
    return f"{parts.scheme}://{parts.netloc}{path}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
