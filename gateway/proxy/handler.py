"""The proxy's ASGI app: allowlisted routes in, one replica's answer out."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol

from gateway.asgi import Receive, Scope, Send, send_bytes
from gateway.auth.principal import Principal
from gateway.errors import ModelNotFound, PermissionDenied
from gateway.limits.admission import Admissions, Ticket
from gateway.middleware.context import RequestContext, context_of
from gateway.proxy.body import ClientGone, parse_request, read_body
from gateway.proxy.forward import Exchange, Outcome, UpstreamRequest
from gateway.proxy.headers import header_value, upstream_headers
from gateway.proxy.request_edit import TokenPolicy, edit_request
from gateway.proxy.routes import Route, match_route
from gateway.proxy.upstream import UpstreamClient
from gateway.upstreams.pool import Pools
from gateway.usage.records import TokenUsage

OWNER = "vllm-gateway"


class Authenticate(Protocol):
    async def authenticate(self, header: bytes | None) -> Principal: ...


class RecordUsage(Protocol):
    def record(self, principal: str, tenant: str, model: str, usage: TokenUsage | None) -> None: ...


@dataclass(frozen=True, slots=True)
class ProxyOptions:
    max_body_bytes: int
    refuse_over_cap: bool = False
    # Completion tokens a request with no max_tokens (under no cap) reserves.
    default_reserve: int = 1024


class ProxyApp:
    def __init__(
        self,
        pools: Pools,
        upstream: UpstreamClient,
        auth: Authenticate,
        *,
        limits: Admissions,
        usage: RecordUsage,
        options: ProxyOptions,
    ) -> None:
        self._pools = pools
        self._upstream = upstream
        self._auth = auth
        self._limits = limits
        self._usage = usage
        self._options = options
        self._created = int(time.time())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = context_of(scope)
        # The allowlist comes first: an unknown path is a 404 whoever asks.
        route, model = match_route(scope["method"], scope.get("raw_path") or b"")
        context.route = route.value
        principal = await self._auth.authenticate(header_value(scope["headers"], b"authorization"))
        context.principal = principal
        if route is Route.MODELS:
            await send_bytes(send, 200, self._model_list(principal))
        elif route is Route.MODEL:
            await send_bytes(send, 200, self._model_card(model or "", principal))
        else:
            try:
                await self._forward(scope, receive, send, context, principal=principal, route=route)
            except ClientGone:
                context.client_disconnected = True

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        context: RequestContext,
        *,
        principal: Principal,
        route: Route,
    ) -> None:
        headers = scope["headers"]
        declared = header_value(headers, b"content-length")
        body = await read_body(
            receive,
            self._options.max_body_bytes,
            int(declared) if declared and declared.isdigit() else None,
        )
        payload, model = parse_request(body)
        context.model = model
        pool = self._pools.get(model)
        if not principal.may_use(model):
            raise PermissionDenied(f"This API key may not use the model '{model}'.", param="model")
        options = self._options
        policy = TokenPolicy(
            principal.limits.max_tokens, options.refuse_over_cap, options.default_reserve
        )
        edited = edit_request(route, payload, body, policy)
        ticket = await self._limits.admit(principal, model, edited.token_estimate)
        exchange = Exchange(
            self._upstream.session,
            self._upstream.timeouts,
            strip_usage=edited.strip_usage,
            headers=ticket.headers,
        )
        context.outcome = exchange.outcome
        try:
            with pool.pick().lease() as replica:
                context.replica = replica.url
                url = replica.url_for(route.value, scope.get("query_string") or b"")
                request = UpstreamRequest(
                    url,
                    replica.url,
                    edited.body,
                    upstream_headers(headers, context.request_id, replica.authorization),
                    context.request_id.encode(),
                )
                await exchange.run(receive, send, request)
        finally:
            await self._account(ticket, exchange.outcome, principal, model)

    async def _account(
        self, ticket: Ticket, outcome: Outcome, principal: Principal, model: str
    ) -> None:
        """Settle the limits and record the usage, however the request ended.

        Without a reported usage, an answer that started (a client that left
        mid-stream) keeps its whole token reservation; one that never did costs none.
        """
        usage = outcome.usage
        if usage is not None:
            used: int | None = usage.total_tokens
        else:
            used = None if outcome.status == HTTPStatus.OK else 0
        await self._limits.finish(ticket, used)
        if outcome.status == HTTPStatus.OK:
            self._usage.record(principal.id, principal.tenant, model, usage)

    def _card(self, model: str) -> dict[str, object]:
        return {
            "id": model,
            "object": "model",
            "created": self._created,
            "owned_by": "vllm-gateway",
        }

    def _model_list(self, principal: Principal) -> bytes:
        data = [self._card(model) for model in self._pools.models if principal.may_use(model)]
        return json.dumps({"object": "list", "data": data}, separators=(",", ":")).encode()

    def _model_card(self, model: str, principal: Principal) -> bytes:
        self._pools.get(model)
        if not principal.may_use(model):
            # Models a caller may not use are not listed, so they do not exist for it.
            raise ModelNotFound(f"The model '{model}' does not exist.", param="model")
        return json.dumps(self._card(model), separators=(",", ":")).encode()
