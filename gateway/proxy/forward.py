"""Forward one request to one replica and stream its answer back byte for byte.

`Exchange` owns the upstream response from the moment it exists, and releases
it in one `finally` on completion, error, timeout or client disconnect; closing
it closes the replica connection, which makes vLLM abort the generation.

The response start is held back until the first body bytes arrive. Until then
any failure is still an ordinary error response (502/504). After it, a failure
cannot change the status: a stream ends with one error event (`errors.
stream_error_event`), and any other body is cut off so the client sees an
incomplete response rather than a complete-looking wrong one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from yarl import URL

from gateway.asgi import Receive, Send
from gateway.drain import Drain
from gateway.errors import (
    GatewayError,
    ReplicaBusy,
    ReplicaConnectTimeout,
    ShuttingDown,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway.metrics import replica_label
from gateway.proxy.framing import OPENAI, Framing, StreamScanner
from gateway.proxy.headers import client_headers
from gateway.proxy.interrupter import (
    CLIENT_STALL,
    DISCONNECT,
    DRAINED,
    Interrupter,
)
from gateway.proxy.upstream import (
    BROKEN,
    UPSTREAM_ERRORS,
    BodyReader,
    HttpClient,
    Timeouts,
    UpstreamResponse,
    upstream_error,
)
from gateway.proxy.usage_scan import BodyUsage
from gateway.request_record import Outcome

logger = logging.getLogger("gateway.proxy")

EVENT_STREAM = b"text/event-stream"
# What a client is told about a replica failure after its response started.
LOST = "the connection to the model server was lost"
QUIET = "the model server stopped sending"
# In vLLM's 503s for a full queue (QueueOverflowError, MaxQueuedTokensError) and only there:
# the request was refused before the engine saw it.
QUEUE_FULL = b"try again later or on a different instance"


@dataclass(frozen=True, slots=True)
class StreamMeters:
    """Per-model instruments a streamed answer updates as it goes."""

    observe_gap: Callable[[float], None]
    opened: Callable[[], None]
    closed: Callable[[], None]


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """What goes to the replica: the client's own body bytes, with rewritten headers."""

    url: URL
    replica: str
    body: bytes
    headers: dict[str, str]
    request_id: str
    # GET only for reading a stored response (gateway.proxy.stored_responses).
    method: str = "POST"


class Exchange:
    """One client request forwarded to one replica.

    The answer's `usage` is read as it passes (`outcome.usage`). With
    `strip_usage` the gateway itself asked for the stream's usage event, which
    is then kept from the client. `headers` are added to the response's own.
    `drain`, when given, may end the exchange when the shutdown's grace ends.
    `framing` is the route's protocol: where usage is, how a failed stream ends.
    """

    def __init__(
        self,
        client: HttpClient,
        timeouts: Timeouts,
        *,
        strip_usage: bool = False,
        headers: list[tuple[bytes, bytes]] | None = None,
        refuse_busy: bool = False,
        meters: StreamMeters | None = None,
        drain: Drain | None = None,
        framing: Framing = OPENAI,
    ) -> None:
        self._client = client
        self._framing = framing
        self._drain = drain
        self._timeouts = timeouts
        self._strip_usage = strip_usage
        self._headers = headers
        # vLLM's 503 for its full queue becomes ReplicaBusy (another replica may take the
        # request) instead of the client's answer.
        self._refuse_busy = refuse_busy
        self._meters = meters
        self.outcome = Outcome()

    async def run(self, receive: Receive, send: Send, request: UpstreamRequest) -> None:
        timeouts = self._timeouts
        interrupter = Interrupter(receive, timeouts.first_byte, timeouts.client_write)
        response: UpstreamResponse | None = None
        started = False
        drain = self._drain
        if drain is not None:
            drain.track(interrupter)
        try:
            response, first = await self._open(request)
            interrupter.set_limit(timeouts.idle)
            interrupter.writing_since = time.perf_counter()
            await self._start(send, response)
            interrupter.writing_since = 0.0
            started = True
            await self._stream(send, response, first, interrupter)
        except asyncio.CancelledError:
            reason = interrupter.claim()
            if reason is None:
                raise
            await self._interrupted(send, reason, request, started, response)
        except BROKEN as exc:
            if not started:
                raise _unreachable(request, "closed the connection before answering") from exc
            await self._broken(send, request, response, UpstreamUnreachable(LOST), "was lost")
        finally:
            interrupter.stop()
            if drain is not None:
                drain.untrack(interrupter)
            if response is not None:
                # Closing (not releasing) a response that was not read to its end
                # drops the connection, which is what makes vLLM abort.
                response.close()

    async def _open(self, request: UpstreamRequest) -> tuple[UpstreamResponse, bytes]:
        """Send the request; its response and the first bytes of its body."""
        self.outcome.upstream_sent_at = time.perf_counter()
        try:
            response = await self._client.request(
                request.method, request.url, request.body, request.headers
            )
        except UPSTREAM_ERRORS as exc:
            raise upstream_error(exc, request.replica, request.request_id) from exc
        try:
            if response.status == HTTPStatus.UNAUTHORIZED:
                raise _credentials_refused(request)
            first = await response.content.readany()
            self.outcome.upstream_first_byte_at = time.perf_counter()
            if response.status == HTTPStatus.SERVICE_UNAVAILABLE and self._refuse_busy:
                first += await response.content.read()
                if QUEUE_FULL in first:
                    logger.info("replica %s is at its queue limit", _shown(request))
                    raise ReplicaBusy("A server for this model is at its queue limit.")
        except BaseException as exc:
            response.close()
            if isinstance(exc, UPSTREAM_ERRORS):
                raise upstream_error(exc, request.replica, request.request_id) from exc
            raise
        return response, first

    async def _start(self, send: Send, response: UpstreamResponse) -> None:
        self.outcome.status = response.status
        headers = client_headers(response.raw_headers)
        if self._headers:
            headers.extend(self._headers)
        await send({"type": "http.response.start", "status": response.status, "headers": headers})

    async def _stream(
        self, send: Send, response: UpstreamResponse, first: bytes, interrupter: Interrupter
    ) -> None:
        outcome = self.outcome
        streamed = _is_stream(response)
        reasons = outcome.finish_reasons
        framing = self._framing
        stream = (
            framing.stream_usage(strip=self._strip_usage, reasons=reasons) if streamed else None
        )
        ok = response.status == HTTPStatus.OK
        body = framing.body_usage() if stream is None and ok else None
        meters = self._meters if streamed else None
        if meters is not None:
            meters.opened()
        try:
            await self._relay(send, response.content, first, interrupter, stream=stream, body=body)
        finally:
            if meters is not None:
                meters.closed()
        last = b""
        if stream is not None:
            outcome.usage = stream.usage
            last = stream.end()
        elif body is not None:
            outcome.usage = body.usage(reasons)
        outcome.bytes_sent += len(last)
        # Still watched: the last write can wait on a client that stopped reading too.
        interrupter.writing_since = time.perf_counter()
        await send({"type": "http.response.body", "body": last, "more_body": False})

    async def _relay(
        self,
        send: Send,
        content: BodyReader,
        chunk: bytes,
        interrupter: Interrupter,
        *,
        stream: StreamScanner | None,
        body: BodyUsage | None,
    ) -> None:
        """Each read from the replica to the client, as it arrives, timed."""
        outcome = self.outcome
        perf = time.perf_counter
        observe_gap = self._meters.observe_gap if self._meters and stream else None
        previous = 0.0
        while chunk:
            began = perf()
            if stream is not None:
                chunk = stream.feed(chunk)
            elif body is not None:
                body.feed(chunk)
            if chunk:
                if not outcome.first_byte_at:
                    outcome.first_byte_at = began
                elif observe_gap is not None:
                    observe_gap(began - previous)
                previous = began
                outcome.bytes_sent += len(chunk)
                interrupter.writing_since = began
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                ended = perf()
                interrupter.writing_since = 0.0
                outcome.chunks += 1
                outcome.chunk_seconds += ended - began
                began = ended
            interrupter.last = began
            chunk = await content.readany()

    async def _interrupted(
        self,
        send: Send,
        reason: str,
        request: UpstreamRequest,
        started: bool,
        response: UpstreamResponse | None,
    ) -> None:
        outcome, request_id = self.outcome, request.request_id
        if reason == DISCONNECT:
            outcome.client_disconnected = True
            return
        if reason == DRAINED:
            await self._drained(send, request, started, response)
            return
        if reason == CLIENT_STALL:
            # Nothing more can be written; returning unfinished makes the server close the
            # connection, and closing the response makes the replica abort.
            outcome.client_stalled = True
            limit = self._timeouts.client_write
            logger.warning("client stopped reading for %g s; request %s ended", limit, request_id)
            return
        if not started:
            logger.warning(
                "replica %s sent no answer within %g s (request %s)",
                _shown(request),
                self._timeouts.first_byte,
                request_id,
            )
            raise UpstreamTimeout(
                f"The model server sent no answer in time (request {request_id})."
            )
        await self._broken(send, request, response, UpstreamTimeout(QUIET), "went quiet")

    async def _drained(
        self,
        send: Send,
        request: UpstreamRequest,
        started: bool,
        response: UpstreamResponse | None,
    ) -> None:
        """The shutdown's grace ended first; no fault of the replica's."""
        request_id = request.request_id
        logger.warning("request %s ended by the gateway's shutdown", request_id)
        self.outcome.drained = True
        if not started:
            raise ShuttingDown(
                f"The gateway is shutting down; send the request again (request {request_id}).",
                headers={"retry-after": "1"},
            )
        await self._end(send, request, response, ShuttingDown(DRAINED))

    async def _broken(
        self,
        send: Send,
        request: UpstreamRequest,
        response: UpstreamResponse | None,
        error: GatewayError,
        what: str,
    ) -> None:
        """The response already started and the replica failed: end it as honestly as we can."""
        logger.warning(
            "replica %s %s mid-response (request %s)", _shown(request), what, request.request_id
        )
        await self._end(send, request, response, error)

    async def _end(
        self,
        send: Send,
        request: UpstreamRequest,
        response: UpstreamResponse | None,
        error: GatewayError,
    ) -> None:
        """End a started response: a stream with one error event, any other body cut off."""
        request_id = request.request_id
        self.outcome.stream_error = error.message
        content_type = b"" if response is None else _content_type(response)
        if content_type.startswith(EVENT_STREAM):
            error.message = f"The stream was interrupted: {error.message} (request {request_id})."
            error_event = self._framing.error_event(error)
            self.outcome.bytes_sent += len(error_event)
            # A client that stopped reading too must not hold the request open.
            try:
                async with asyncio.timeout(self._timeouts.client_write):
                    await send(
                        {"type": "http.response.body", "body": error_event, "more_body": False}
                    )
            except TimeoutError:
                self.outcome.client_stalled = True
        # Any other body is left incomplete: the server closes the connection.


def _shown(request: UpstreamRequest) -> str:
    """The replica as the log shows it: without credentials in its URL."""
    return replica_label(request.replica)


def _unreachable(request: UpstreamRequest, what: str) -> UpstreamUnreachable:
    request_id = request.request_id
    logger.warning("replica %s %s (request %s)", _shown(request), what, request_id)
    return UpstreamUnreachable(
        f"The model server closed the connection before answering (request {request_id})."
    )


def _credentials_refused(request: UpstreamRequest) -> UpstreamUnreachable:
    """A replica's 401 is about the gateway's key for it, never the client's: the operator's
    to fix, so the details go to the log only."""
    request_id = request.request_id
    logger.error(
        "replica %s refused the gateway's API key for it; check the replica's api_key in "
        "the gateway settings (request %s)",
        _shown(request),
        request_id,
    )
    return UpstreamUnreachable(
        f"The gateway could not use a server for this model (request {request_id})."
    )


def _is_stream(response: UpstreamResponse) -> bool:
    return _content_type(response).startswith(EVENT_STREAM)


def _content_type(response: UpstreamResponse) -> bytes:
    for name, value in response.raw_headers:
        if name.lower() == b"content-type":
            return value.lower()
    return b""


def failure_kind(outcome: Outcome, error: GatewayError | None) -> str | None:
    """What went wrong with one attempt at a replica, for metrics; None if nothing did."""
    if isinstance(error, ReplicaBusy):
        return "busy"
    if isinstance(error, UpstreamTimeout) and not isinstance(error, ReplicaConnectTimeout):
        return "timeout"
    if error is not None:
        return "connect" if getattr(error, "never_reached", False) else "reset"
    if outcome.stream_error is not None:
        # A stream the drain ended was no fault of the replica's.
        return None if outcome.drained else "stream"
    if outcome.status >= HTTPStatus.INTERNAL_SERVER_ERROR:
        return "busy" if outcome.status == HTTPStatus.SERVICE_UNAVAILABLE else "status"
    return None
