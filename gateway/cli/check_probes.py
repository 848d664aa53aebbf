"""The probes behind `vllm-gateway check`: one function per test, each raising `CheckFailed`.

httpx errors become one-line reasons in `mapped_errors` and nowhere else, so the command
can print every failure as a single line and never a traceback.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus

import httpx

PROMPT = "The capital of France is"
CHAT_PROMPT = "What is the capital of France?"
MAX_TOKENS = 16
ERROR_TEXT_LIMIT = 200
SHOWN_MODELS = 5
SHOWN_ANSWER = 40


class CheckFailed(Exception):
    """A test failed; the message is the whole one-line reason."""


@contextmanager
def mapped_errors(url: str) -> Iterator[None]:
    """Turn any httpx error raised while talking to URL into a `CheckFailed`."""
    try:
        yield
    except httpx.ConnectTimeout as exc:
        raise CheckFailed(f"timed out connecting to {url}") from exc
    except httpx.TimeoutException as exc:
        raise CheckFailed(f"timed out waiting for {url}") from exc
    except httpx.ConnectError as exc:
        raise CheckFailed(connect_failure(url, exc)) from exc
    except (httpx.ReadError, httpx.RemoteProtocolError) as exc:
        raise CheckFailed(f"the connection to {url} broke off ({exc})") from exc
    except httpx.HTTPError as exc:
        raise CheckFailed(f"request to {url} failed ({type(exc).__name__}: {exc})") from exc


def connect_failure(url: str, exc: BaseException) -> str:
    # httpx wraps httpcore, which wraps the socket or ssl error that says what happened;
    # httpcore links it as __context__ only, so follow both links.
    root = exc
    while (inner := root.__cause__ or root.__context__) is not None:
        root = inner
    if isinstance(root, ssl.SSLCertVerificationError):
        return f"TLS certificate verify failed for {url} ({root.verify_message})"
    if isinstance(root, ssl.SSLError):
        return f"TLS handshake failed for {url} ({root.reason or root})"
    if isinstance(root, ConnectionRefusedError):
        return f"cannot connect to {url} (connection refused)"
    if isinstance(root, socket.gaierror):
        return f"cannot connect to {url} (cannot resolve the host name)"
    return f"cannot connect to {url} ({root})"


def http_failure(response: httpx.Response) -> str:
    """`HTTP 401 Unauthorized: <the server's own message>`, on one line."""
    phrase = response.reason_phrase or HTTPStatus(response.status_code).phrase
    try:
        message = error_message(response.json())
    except ValueError:
        message = response.text
    message = " ".join(message.split())
    if len(message) > ERROR_TEXT_LIMIT:
        message = message[:ERROR_TEXT_LIMIT] + "..."
    status = f"HTTP {response.status_code} {phrase}"
    return f"{status}: {message}" if message else status


def error_message(body: object) -> str:
    # OpenAI and newer vLLM nest {"error": {"message"}}; vLLM's --api-key guard sends
    # {"error": "Unauthorized"}; older vLLM puts "message" at the top; FastAPI uses "detail".
    nested = dig(body, "error", "message")
    for candidate in (nested, dig(body, "error"), dig(body, "message"), dig(body, "detail")):
        if isinstance(candidate, str):
            return candidate
    return json.dumps(body)


def dig(value: object, *path: str | int) -> object:
    """`value[p0][p1]...`, or None as soon as a step does not exist."""
    for step in path:
        if isinstance(step, str) and isinstance(value, dict):
            value = value.get(step)
        elif isinstance(step, int) and isinstance(value, list) and len(value) > step:
            value = value[step]
        else:
            return None
    return value


def parse_json(text: str, url: str) -> object:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CheckFailed(f"{url} sent something that is not JSON: {text[:80]!r}") from exc


@dataclass
class Probe:
    """What every test needs: the run's one client, the server's /v1 URL, and the model."""

    client: httpx.Client
    base_url: str
    model: str | None = None

    def list_models(self) -> list[str]:
        url = f"{self.base_url}/models"
        with mapped_errors(url):
            response = self.client.get(url)
        if response.status_code != 200:
            raise CheckFailed(http_failure(response))
        entries = dig(parse_json(response.text, url), "data")
        ids = [dig(entry, "id") for entry in entries] if isinstance(entries, list) else []
        names = [name for name in ids if isinstance(name, str)]
        if not names:
            raise CheckFailed(f"GET {url} listed no models")
        return names

    def resolve_model(self) -> str:
        if self.model is None:
            self.model = self.list_models()[0]
        return self.model

    def post(self, path: str, payload: dict[str, object]) -> object:
        url = f"{self.base_url}{path}"
        with mapped_errors(url):
            response = self.client.post(url, json=payload)
        if response.status_code != 200:
            raise CheckFailed(http_failure(response))
        return parse_json(response.text, url)

    def post_stream(self, path: str, payload: dict[str, object]) -> Iterator[object]:
        """Yield each SSE `data:` event's JSON; fail unless the stream ends with [DONE]."""
        url = f"{self.base_url}{path}"
        with mapped_errors(url), self.client.stream("POST", url, json=payload) as response:
            if response.status_code != 200:
                response.read()
                raise CheckFailed(http_failure(response))
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line.removeprefix("data:").strip()
                if data == "[DONE]":
                    return
                event = parse_json(data, url)
                # The one mid-stream failure rule: a single error event, then close.
                if dig(event, "error") is not None:
                    raise CheckFailed(f"error event in the stream: {error_message(event)}")
                yield event
        raise CheckFailed(f"the stream from {url} ended without data: [DONE]")


def check_health(probe: Probe) -> str:
    names = probe.list_models()
    if probe.model is None:
        probe.model = names[0]
    elif probe.model not in names:
        raise CheckFailed(f"model {probe.model!r} is not listed (listed: {', '.join(names)})")
    shown = ", ".join(names[:SHOWN_MODELS]) + (", ..." if len(names) > SHOWN_MODELS else "")
    return f"{len(names)} model{'' if len(names) == 1 else 's'} ({shown})"


def check_completion(probe: Probe) -> str:
    payload: dict[str, object] = {
        "model": probe.resolve_model(),
        "prompt": PROMPT,
        "max_tokens": MAX_TOKENS,
    }
    return check_generation(probe, "/completions", payload, ("text",), ("text",))


def check_chat(probe: Probe) -> str:
    payload: dict[str, object] = {
        "model": probe.resolve_model(),
        "messages": [{"role": "user", "content": CHAT_PROMPT}],
        "max_tokens": MAX_TOKENS,
    }
    whole, delta = ("message", "content"), ("delta", "content")
    return check_generation(probe, "/chat/completions", payload, whole, delta)


def check_generation(
    probe: Probe,
    path: str,
    payload: dict[str, object],
    whole: tuple[str, ...],
    delta: tuple[str, ...],
) -> str:
    """One plain request, then the same streamed; WHOLE and DELTA locate the text in each."""
    text = dig(probe.post(path, payload), "choices", 0, *whole)
    if not isinstance(text, str) or not text:
        raise CheckFailed(f"POST {path} returned no text in choices[0].{'.'.join(whole)}")
    try:
        events = probe.post_stream(path, {**payload, "stream": True})
        chunks = [t for e in events if isinstance(t := dig(e, "choices", 0, *delta), str) and t]
    except CheckFailed as exc:
        raise CheckFailed(f"streamed: {exc}") from exc
    if not chunks:
        raise CheckFailed(f"streamed: POST {path} sent [DONE] without any text chunk")
    answer = " ".join(text.split())
    if len(answer) > SHOWN_ANSWER:
        answer = answer[:SHOWN_ANSWER] + "..."
    return f"{answer!r}; streamed {len(chunks)} chunks up to [DONE]"


def check_embeddings(probe: Probe) -> str:
    payload: dict[str, object] = {"model": probe.resolve_model(), "input": PROMPT}
    vector = dig(probe.post("/embeddings", payload), "data", 0, "embedding")
    if not isinstance(vector, list) or not vector or not all(isinstance(x, float) for x in vector):
        raise CheckFailed("POST /embeddings returned no float vector in data[0].embedding")
    return f"a vector of {len(vector)} floats"


TESTS: dict[str, Callable[[Probe], str]] = {
    "health": check_health,
    "completion": check_completion,
    "chat": check_chat,
    "embeddings": check_embeddings,
}
ALL_TESTS = ("health", "completion", "chat")
