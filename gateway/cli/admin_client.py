"""The admin API as `vllm-gateway keys` and `upstreams` use it: one httpx client,
errors as one-liners.

Every failure leaves this module as a `KeysCliError` whose text is the line to print:
the gateway's own error message with its HTTP status, or why it could not be reached.
"""

from __future__ import annotations

import argparse
import ssl
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pydantic

from gateway.cli.output import Output

TIMEOUT_S = 30.0
ADMIN_PREFIX = "/admin/v1"
Json = dict[str, Any]


class KeysCliError(Exception):
    """The command failed; exit 1."""


class UsageError(KeysCliError):
    """The command line cannot work as given; exit 2."""


class ApiError(KeysCliError):
    """The gateway answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")


@dataclass
class AdminApi:
    """The admin API over one client; errors come out as `KeysCliError`s."""

    client: httpx.Client

    def call(
        self, method: str, path: str, body: Json | None = None, params: Json | None = None
    ) -> Json:
        with map_http_errors(str(self.client.base_url).removesuffix(f"{ADMIN_PREFIX}/")):
            response = self.client.request(method, path, json=body, params=params)
        if response.is_error:
            raise ApiError(response.status_code, error_message(response))
        if response.status_code == 204:  # done, and nothing to say (a delete)
            return {}
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ApiError(response.status_code, "the gateway's answer is not a JSON object")
        return data


@contextmanager
def map_http_errors(url: str) -> Iterator[None]:
    try:
        yield
    except httpx.TimeoutException as exc:
        raise KeysCliError(f"no answer from {url} within {TIMEOUT_S:g} s") from exc
    except httpx.ConnectError as exc:
        raise KeysCliError(f"cannot connect to {url} ({exc})") from exc
    except httpx.HTTPError as exc:
        raise KeysCliError(f"request to {url} failed ({exc})") from exc


def error_message(response: httpx.Response) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = None
    if isinstance(message, str) and message:
        return message
    return response.reason_phrase or "error"


def gateway_url(text: str) -> str:
    """The gateway's root URL, from the root itself or its admin API URL."""
    url = text.strip().rstrip("/").removesuffix(ADMIN_PREFIX)
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise UsageError(f"not an http:// or https:// URL: {text!r}")
    return url


def open_client(url: str, token: str, cacert: str | None, insecure: bool) -> httpx.Client:
    """The run's one client: admin URL, Bearer token and TLS trust, set once."""
    # A header carries printable ASCII only; say so rather than let httpx fail later.
    if not (token.isascii() and token.isprintable()):
        raise UsageError("the admin token must be printable ASCII")
    verify: ssl.SSLContext | bool = not insecure
    if cacert:
        try:
            verify = ssl.create_default_context(cafile=cacert)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load the CA bundle {cacert} ({exc})") from exc
    return httpx.Client(
        base_url=f"{gateway_url(url)}{ADMIN_PREFIX}/",
        headers={"Authorization": f"Bearer {token}"},
        verify=verify,
        timeout=httpx.Timeout(TIMEOUT_S),
    )


URL_ENV = "VLLM_GATEWAY_URL"
TOKEN_ENV = "VLLM_GATEWAY_ADMIN_TOKEN"  # noqa: S105 (a variable name, not a secret)
AdminAction = Callable[[AdminApi, Output, Output], int]


def run_admin(
    name: str, args: argparse.Namespace, environ: Mapping[str, str], action: AdminAction
) -> int:
    """The edge of an admin CLI command: its URL and token (flags, else the environment),
    one client for ACTION, and every failure as an exit code (2 usage, 1 the gateway's
    refusal or absence, 130 Ctrl-C). The token is blanked in anything printed."""
    url = args.url or environ.get(URL_ENV) or ""
    token = args.admin_token or environ.get(TOKEN_ENV) or ""
    out, err = Output(sys.stdout, token or None), Output(sys.stderr, token or None)
    try:
        if not url:
            raise UsageError(f"no gateway URL: pass --url or set ${URL_ENV}")
        if not token:
            raise UsageError(f"no admin token: set ${TOKEN_ENV} or pass --admin-token")
        with open_client(url, token, args.cacert, args.insecure) as client:
            return action(AdminApi(client), out, err)
    except UsageError as exc:
        err.line(f"vllm-gateway {name}: error: {exc}")
        return 2
    except KeysCliError as exc:
        err.line(f"error: {exc}")
        return 1
    except pydantic.ValidationError:
        err.line("error: the gateway's answer does not have the admin API's shape")
        return 1
    except KeyboardInterrupt:
        return 130
