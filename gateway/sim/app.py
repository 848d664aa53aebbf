"""The simulator's raw ASGI application: routing, vLLM's API-key check and the watched handlers.

No framework router: a dict from path to {method: handler} is all the
simulator needs, and keeps it a cheap upstream for the gateway's benchmark.
The `/sim/*` routes are the simulator's own test controls (see `control.py`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST

from gateway.sim.audio import SpeechGenerator, decode_form
from gateway.sim.config import SimConfig
from gateway.sim.control import SimControl
from gateway.sim.engine import Engine
from gateway.sim.errors import SimError
from gateway.sim.exchange import (
    JSON_HEADERS,
    ClientGone,
    Exchange,
    Handler,
    Headers,
    Receive,
    Scope,
    Send,
    read_body,
    run_watched,
    send_response,
)
from gateway.sim.fields import decode_object
from gateway.sim.generate import Call, Generator
from gateway.sim.knobs import Knobs
from gateway.sim.messages import MessagesGenerator
from gateway.sim.metrics import SimMetrics
from gateway.sim.pooling import PoolingGenerator
from gateway.sim.protocol import DETERMINISTIC_CREATED, models_body
from gateway.sim.requests import check_content_type
from gateway.sim.responses import PREFIX as RESPONSES_PREFIX
from gateway.sim.responses import ResponsesGenerator

Endpoint = Callable[[Call, dict[str, object]], Awaitable[None]]
Decode = Callable[[Headers, bytes], dict[str, object]]

NOT_FOUND = b'{"detail":"Not Found"}'
METHOD_NOT_ALLOWED = b'{"detail":"Method Not Allowed"}'
UNAUTHORIZED = b'{"error":"Unauthorized"}'
UNGUARDED = b'{"sim_unguarded":true}'
# vLLM routes the gateway must never forward; served so tests can prove they are never reached.
UNGUARDED_ROUTES = {
    "/tokenize": "POST",
    "/detokenize": "POST",
    "/invocations": "POST",
    "/pooling": "POST",
    "/score": "POST",
    "/rerank": "POST",
    "/classify": "POST",
    "/v1/load_lora_adapter": "POST",
    "/v1/unload_lora_adapter": "POST",
    "/reset_prefix_cache": "POST",
    "/sleep": "POST",
    "/wake_up": "POST",
    "/collective_rpc": "POST",
    "/ping": "GET",
    "/docs": "GET",
    "/redoc": "GET",
    "/openapi.json": "GET",
    "/version": "GET",
    "/server_info": "GET",
    "/is_sleeping": "GET",
}


def _decode_json(headers: Headers, body: bytes) -> dict[str, object]:
    check_content_type(headers.get(b"content-type"))
    return decode_object(body)


def create_sim_app(config: SimConfig) -> SimApp:
    """A new simulator ASGI app with its own engine state and metrics registry."""
    return SimApp(config)


class SimApp:
    """An ASGI app speaking vLLM's OpenAI-compatible protocol. Never a real model."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.metrics = SimMetrics(config.model, config.reported_load)
        self._control = SimControl(self.metrics)
        engine = Engine(
            config.max_num_seqs,
            self.metrics,
            config.max_num_queued_reqs,
            prefill_s_per_token=config.prefill_ms_per_1k / 1_000_000,
        )
        self._generator = Generator(config, engine)
        self._messages = MessagesGenerator(config, engine)
        self._responses = ResponsesGenerator(config, engine)
        self._pooling = PoolingGenerator(config, engine)
        self._speech = SpeechGenerator(config, engine)
        self._knobs = Knobs.defaults(config)
        self._api_key = config.api_key.encode() if config.api_key is not None else None
        created = DETERMINISTIC_CREATED if config.deterministic else int(time.time())
        self._models = models_body(config.model, created, config.max_model_len)
        self._routes = self._build_routes()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)

    def _build_routes(self) -> dict[str, dict[str, Handler]]:
        generation = self._generation
        routes: dict[str, dict[str, Handler]] = {
            "/health": {"GET": self._health},
            "/metrics": {"GET": self._metrics},
            "/v1/models": {"GET": self._list_models},
            "/v1/chat/completions": {"POST": generation(self._generator.chat)},
            "/v1/completions": {"POST": generation(self._generator.completion)},
            "/v1/embeddings": {"POST": generation(self._generator.embedding)},
            "/v1/messages": {"POST": generation(self._messages.messages)},
            "/v1/messages/count_tokens": {"POST": generation(self._messages.count_tokens)},
            "/v1/responses": {"POST": generation(self._responses.create)},
            "/v1/rerank": {"POST": generation(self._pooling.rerank)},
            "/v2/rerank": {"POST": generation(self._pooling.rerank)},
            "/v1/score": {"POST": generation(self._pooling.score)},
            "/v2/embed": {"POST": generation(self._pooling.embed_v2)},
            "/v1/audio/transcriptions": {
                "POST": generation(self._speech.transcription, decode_form)
            },
            "/v1/audio/translations": {"POST": generation(self._speech.translation, decode_form)},
        }
        for path, method in UNGUARDED_ROUTES.items():
            routes[path] = {method: self._unguarded}
        routes.update(self._control.routes())
        return routes

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path = scope.get("raw_path")
        path: str = scope["path"]
        self.metrics.count_request(raw_path.decode("latin-1") if raw_path else path)
        headers: Headers = dict(scope["headers"])
        # vLLM's API-key middleware guards every /v1 path and lets CORS preflights through.
        if self._guarded(path, scope["method"]) and not self._authorized(headers):
            await send_response(send, 401, UNAUTHORIZED, JSON_HEADERS)
            return
        handlers = self._routes.get(path)
        if handlers is None and path.startswith(RESPONSES_PREFIX):
            handlers = self._responses.routes_for(path)
        handler = None if handlers is None else handlers.get(scope["method"])
        if handlers is None:
            await send_response(send, 404, NOT_FOUND, JSON_HEADERS)
        elif handler is None:
            allow = [(b"allow", ", ".join(handlers).encode()), *JSON_HEADERS]
            await send_response(send, 405, METHOD_NOT_ALLOWED, allow)
        else:
            await handler(scope, receive, send, headers)

    def _guarded(self, path: str, method: str) -> bool:
        return self._api_key is not None and path.startswith("/v1") and method != "OPTIONS"

    def _authorized(self, headers: Headers) -> bool:
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        expected = self._api_key or b""
        return scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), expected)

    async def _health(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        # Empty either way, as vLLM's: 200, or 503 once `PUT /sim/health` says the engine died.
        await send_response(send, self._control.health_status, b"")

    async def _metrics(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        content_type = [(b"content-type", CONTENT_TYPE_LATEST.encode())]
        await send_response(send, 200, self.metrics.render(), content_type)

    async def _list_models(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers
    ) -> None:
        await send_response(send, 200, self._models, JSON_HEADERS)

    async def _unguarded(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers
    ) -> None:
        await send_response(send, 200, UNGUARDED, JSON_HEADERS)

    def _generation(self, endpoint: Endpoint, decode: Decode = _decode_json) -> Handler:
        async def handle(scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
            try:
                body = await read_body(receive)
            except ClientGone:
                return
            exchange = Exchange(send)
            work = self._answer(endpoint, exchange, headers, body, decode)
            await run_watched(receive, exchange, work)

        return handle

    async def _answer(
        self, endpoint: Endpoint, exchange: Exchange, headers: Headers, body: bytes, decode: Decode
    ) -> None:
        """Stall, fail, validate, then generate; errors before the response starts are JSON."""
        try:
            knobs = self._knobs.override(headers)
            if knobs.stall_ms > 0:
                await asyncio.sleep(knobs.stall_ms / 1000)
            if knobs.fail_status is not None:
                raise SimError(knobs.fail_status, "Simulated failure (vllm-gateway simulator)")
            payload = decode(headers, body)
            request_id = headers.get(b"x-request-id")
            call = Call(exchange, knobs, request_id.decode("latin-1") if request_id else None)
            await endpoint(call, payload)
        except SimError as error:
            await exchange.respond(error.status, error.body())


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
