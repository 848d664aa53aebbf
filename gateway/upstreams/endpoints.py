"""Where a pool learns its replicas' base URLs: static configuration or a discovery source.

    Exception
    └── DiscoveryError      a source could not be asked (unreachable, refused, timed out,
                            or answered in a shape we do not understand)

A source that was asked fine and sees nothing answers an empty list instead:
the pool can then tell "no replicas" from "could not look", and keep its last
known replicas only in the second case.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar
from urllib.parse import urlsplit

from gateway.settings import normalize_upstream_url

T = TypeVar("T")


class DiscoveryError(Exception):
    """A discovery source could not be asked; the message says which source and why."""


def normalize_endpoint(value: str) -> str:
    """Turn `host:port`, `http://host[:port][/path]` or `https://...` into a base URL.

    Discovery answers come in all three forms (SkyPilot gives `host:port` on
    clouds and `http://ip/skypilot/<ns>/<cluster>/<port>` behind a Kubernetes
    ingress); the pool appends the request's own `/v1/...` path to the result.
    """
    try:
        url = normalize_upstream_url(value)
        parts = urlsplit(url)
        # Reading `.port` is what validates it: "host:abc" and "host:99999" fail here.
        parts.port  # noqa: B018
    except ValueError as exc:
        raise ValueError(f"endpoint {value!r} is not a usable base URL: {exc}") from exc
    if any(char.isspace() for char in parts.netloc):
        raise ValueError(f"endpoint {value!r} is not a usable base URL: whitespace in the host")
    return url


class EndpointSource(Protocol):
    """Something that can say which replicas serve a model right now.

    `endpoints()` returns normalized base URLs (see `normalize_endpoint`), or
    an empty list when the source was asked and sees no replica. It raises
    `DiscoveryError` when the source cannot be asked, so that a controller
    restart is not mistaken for "every replica is gone".
    """

    @property
    def name(self) -> str:
        """What this source is, for logs: "skypilot cluster vllm-1 port 8000"."""
        ...

    async def endpoints(self) -> list[str]: ...


class StaticSource:
    """Replicas written in the configuration; normalized once, so garbage fails at start-up."""

    def __init__(self, urls: Iterable[str], name: str = "static configuration") -> None:
        self.name = name
        self._urls = [normalize_endpoint(url) for url in urls]

    async def endpoints(self) -> list[str]:
        return list(self._urls)


class BlockingCall(Generic[T]):
    """Run a blocking discovery call in a daemon thread, at most one at a time.

    A thread cannot be cancelled: when the call outlives `timeout`, the caller
    gets a `DiscoveryError` but the thread runs on. The next ask waits for that
    same call instead of starting another, so a hung server costs one thread,
    not one per poll. The thread is a daemon of its own, not the loop's default
    executor: a call that never returns (`sky.get` has no read timeout) must
    neither take the executor's few threads nor hold up the gateway's exit,
    which waits for the executor.
    """

    def __init__(self, function: Callable[[], T], what: str, timeout: float) -> None:
        self._function = function
        self._what = what
        self._timeout = timeout
        self._running: asyncio.Future[T] | None = None

    async def __call__(self) -> T:
        running = self._running
        if running is None or running.done():
            running = self._running = _in_daemon_thread(self._function, self._what)
        try:
            return await asyncio.wait_for(asyncio.shield(running), self._timeout)
        except TimeoutError as exc:
            raise DiscoveryError(
                f"{self._what}: no answer within {self._timeout:g} s"
                " (the call still runs; the next ask waits for it)"
            ) from exc


def _in_daemon_thread(function: Callable[[], T], name: str) -> asyncio.Future[T]:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    # Nobody may be awaiting when it finishes (after a timeout): consume its error.
    future.add_done_callback(_consume_error)

    def run() -> None:
        settle: Callable[[], None]
        try:
            result = function()
        except Exception as exc:  # handed over to the awaiting task
            settle = functools.partial(_fail, future, exc)
        else:
            settle = functools.partial(_succeed, future, result)
        # The loop may have closed while the call ran: then nobody waits for its answer.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle)

    threading.Thread(target=run, name=f"discovery: {name}", daemon=True).start()
    return future


def _succeed(future: asyncio.Future[T], result: T) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[T], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)


def _consume_error(future: asyncio.Future[T]) -> None:
    if not future.cancelled():
        future.exception()
