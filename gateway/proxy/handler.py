"""The proxy's ASGI app: allowlisted routes in, one replica's answer out."""

from __future__ import annotations

import json
import time
from typing import Protocol

from gateway.asgi import Receive, Scope, Send, send_bytes
from gateway.auth.principal import Principal
from gateway.errors import ModelNotFound, PermissionDenied
from gateway.middleware.context import RequestContext, context_of
from gateway.proxy.body import ClientGone, parse_request, read_body
from gateway.proxy.forward import Exchange, UpstreamRequest
from gateway.proxy.headers import header_value, upstream_headers
from gateway.proxy.routes import Route, match_route
from gateway.proxy.upstream import UpstreamClient
from gateway.upstreams.pool import Pools

OWNER = "vllm-gateway"


class Authenticate(Protocol):
    async def authenticate(self, header: bytes | None) -> Principal: ...


class ProxyApp:
    def __init__(
        self, pools: Pools, upstream: UpstreamClient, auth: Authenticate, max_body_bytes: int
    ) -> None:
        self._pools = pools
        self._upstream = upstream
        self._auth = auth
        self._max_body_bytes = max_body_bytes
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
                await self._forward(
                    scope, receive, send, context, principal=principal, route_path=route.value
                )
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
        route_path: str,
    ) -> None:
        headers = scope["headers"]
        declared = header_value(headers, b"content-length")
        body = await read_body(
            receive,
            self._max_body_bytes,
            int(declared) if declared and declared.isdigit() else None,
        )
        _, model = parse_request(body)
        context.model = model
        pool = self._pools.get(model)
        if not principal.may_use(model):
            raise PermissionDenied(f"This API key may not use the model '{model}'.", param="model")
        with pool.pick().lease() as replica:
            context.replica = replica.url
            exchange = Exchange(self._upstream.session, self._upstream.timeouts)
            context.outcome = exchange.outcome
            url = replica.url_for(route_path, scope.get("query_string") or b"")
            request = UpstreamRequest(
                url,
                replica.url,
                body,
                upstream_headers(headers, context.request_id, replica.authorization),
                context.request_id.encode(),
            )
            await exchange.run(receive, send, request)

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
