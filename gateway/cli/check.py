"""`vllm-gateway check`: smoke-test a gateway or a vLLM server, as `test-vllm.sh` did.

It prints one PASS or FAIL line per test and exits 0 when all pass, 1 when any fails,
2 on a usage error. The API key goes out only in the Authorization header: every line
this module prints passes through `Output`, which blanks the key should a server echo it.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import time
from typing import TextIO

import httpx

from gateway.cli.check_probes import ALL_TESTS, TESTS, CheckFailed, Probe, dig
from gateway.cli.output import Output

DEFAULT_TIMEOUT_S = 30.0


class UsageError(Exception):
    """The command line cannot work as given; exit 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        required=True,
        type=base_url,
        help="the gateway's or vLLM's base URL, with or without /v1",
    )
    parser.add_argument("--api-key", help="Bearer key (default: $OPENAI_API_KEY)")
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument("--cacert", metavar="PATH", help="CA bundle to verify HTTPS against")
    tls.add_argument("--insecure", action="store_true", help="do not verify HTTPS certificates")
    parser.add_argument("--model", help="model to test (default: the first one listed)")
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="per-request timeout (default: %(default)s)",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--test", choices=[*TESTS, "all"], help="'all' runs health, completion and chat"
    )
    mode.add_argument(
        "--interactive", action="store_true", help="chat from stdin, streaming each answer"
    )


def base_url(text: str) -> str:
    """Accept a server root or its /v1 URL; return the /v1 URL that test paths extend."""
    url = text.strip().rstrip("/").removesuffix("/v1")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise argparse.ArgumentTypeError(f"not a URL: {text!r} ({exc})") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise argparse.ArgumentTypeError(f"not an http:// or https:// URL: {text!r}")
    return f"{url}/v1"


def positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return seconds


def run(args: argparse.Namespace) -> int:
    # STYLE.md keeps os.environ in gateway.settings, but the CLI edge is where OpenAI's own
    # clients read OPENAI_API_KEY too, and `check` stands in for such a client.
    api_key: str | None = args.api_key or os.environ.get("OPENAI_API_KEY") or None
    out = Output(sys.stdout, api_key)
    try:
        client = open_client(api_key, args.cacert, args.insecure, args.timeout)
    except UsageError as exc:
        Output(sys.stderr, api_key).line(f"vllm-gateway check: error: {exc}")
        return 2
    try:
        with client:
            probe = Probe(client, args.url, args.model)
            if args.interactive:
                return interactive(probe, sys.stdin, out)
            names = ALL_TESTS if args.test == "all" else (args.test,)
            return run_tests(probe, names, out)
    except KeyboardInterrupt:
        out.line("")
        return 130


def open_client(
    api_key: str | None, cacert: str | None, insecure: bool, timeout: float
) -> httpx.Client:
    """The run's one client: the Bearer key, the TLS trust and the timeout, set once."""
    headers = {}
    if api_key:
        # A header can only carry printable ASCII; say so rather than let httpx fail later.
        if not (api_key.isascii() and api_key.isprintable()):
            raise UsageError("the API key must be printable ASCII")
        headers["Authorization"] = f"Bearer {api_key}"
    verify: ssl.SSLContext | bool = not insecure
    if cacert:
        try:
            verify = ssl.create_default_context(cafile=cacert)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load the CA bundle {cacert} ({exc})") from exc
    return httpx.Client(headers=headers, verify=verify, timeout=httpx.Timeout(timeout))


def run_tests(probe: Probe, names: tuple[str, ...], out: Output) -> int:
    failed = False
    for name in names:
        started = time.perf_counter()
        try:
            detail = TESTS[name](probe)
        except CheckFailed as exc:
            out.line(f"FAIL {name}: {exc}")
            failed = True
        else:
            elapsed_ms = round((time.perf_counter() - started) * 1000)
            out.line(f"PASS {name}: {detail} in {elapsed_ms} ms")
    return 1 if failed else 0


def interactive(probe: Probe, lines: TextIO, out: Output) -> int:
    """Send each line as a chat turn, keeping the history; stop at an empty line or EOF."""
    history: list[dict[str, str]] = []
    try:
        model = probe.resolve_model()
        while (text := read_turn(lines, out)) is not None:
            history.append({"role": "user", "content": text})
            answer = stream_answer(probe, model, history, out)
            history.append({"role": "assistant", "content": answer})
    except CheckFailed as exc:
        out.line(f"error: {exc}")
        return 1
    return 0


def read_turn(lines: TextIO, out: Output) -> str | None:
    # The prompt is for people; piped input gets only the answers.
    if lines.isatty():
        out.write("> ")
    text = lines.readline().strip()
    return text or None


def stream_answer(probe: Probe, model: str, history: list[dict[str, str]], out: Output) -> str:
    payload: dict[str, object] = {"model": model, "messages": history, "stream": True}
    parts: list[str] = []
    try:
        for event in probe.post_stream("/chat/completions", payload):
            delta = dig(event, "choices", 0, "delta", "content")
            if isinstance(delta, str) and delta:
                out.write(delta)
                parts.append(delta)
    finally:
        # End the answer's line even when the stream broke off, so errors start clean.
        if parts:
            out.write("\n")
    return "".join(parts)
