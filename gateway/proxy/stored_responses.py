"""Responses by id: each one reaches the replica that created it, and only its owner.

- `POST /v1/responses`: the created response's id (the JSON body's first
  field, or the stream's `response.created` event) is remembered with its
  model, replica and owner before the client sees it (`Creation.send` holds
  that read until the store has it), so a GET sent the moment the id arrives
  finds it. A request with `"store": false` is not remembered (vLLM keeps
  nothing). A follow-up turn (`previous_response_id`) goes to the replica
  holding the previous one.
- `GET /v1/responses/{id}` and `POST /v1/responses/{id}/cancel` go to that
  replica, authenticated and counted against the caller's requests per
  minute, reserving no tokens and recording no usage.
- An id that is unknown, expired, or another tenant's is the same 404, in
  the shape vLLM gives an unknown id, so no caller learns another tenant's
  ids exist. An id whose replica left the pool (or is unusable) is a 404
  saying the stored response is no longer available: vLLM keeps stored
  responses in the replica's memory only, and no other replica has it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from yarl import URL

from gateway.asgi import Message, Receive, Scope, Send
from gateway.errors import InvalidRequest, ModelNotFound, RequestError, error_body
from gateway.principal import Principal
from gateway.proxy.forward import Exchange, UpstreamRequest
from gateway.proxy.framing import Framing
from gateway.proxy.headers import upstream_headers
from gateway.proxy.response_store import ResponseStore, ResponseStoreUnavailable, StoredResponse
from gateway.proxy.responses import stream_error_event
from gateway.proxy.responses_usage import RESPONSE_ID, ResponseWatch
from gateway.proxy.routes import Route
from gateway.request_record import RequestContext
from gateway.upstreams.pool import Pool, Pools, Replica

if TYPE_CHECKING:
    from gateway.drain import Drain
    from gateway.limits.admission import Admissions
    from gateway.proxy.upstream import UpstreamClient

logger = logging.getLogger("gateway.proxy")

PREVIOUS = "previous_response_id"


class ResponseNotFound(RequestError):
    """404 in the shape vLLM gives an unknown response id, so the gateway's and the
    replica's answers cannot be told apart."""

    status = 404

    def body(self) -> bytes:
        return error_body(self.message, "invalid_request_error", self.param, 404)


class StoredResponses:
    """The by-id routes, and the bookkeeping of each created response."""

    def __init__(
        self,
        store: ResponseStore,
        pools: Pools,
        upstream: UpstreamClient,
        limits: Admissions,
        *,
        drain: Drain | None = None,
    ) -> None:
        self._store = store
        self._pools = pools
        self._upstream = upstream
        self._limits = limits
        self._drain = drain

    async def serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        context: RequestContext,
        principal: Principal,
        *,
        route: Route,
        response_id: str,
    ) -> None:
        """A GET or cancel by id, forwarded to the replica holding the response. Counted
        against the caller's requests per minute even when the id is not its own, so ids
        cannot be probed faster than requests can be sent."""
        stored = await self._lookup(response_id, principal)
        ticket = await self._limits.admit(principal, "" if stored is None else stored.model, 0)
        try:
            if stored is None:
                raise _not_found(response_id, "response_id")
            context.model, context.known_model = stored.model, True
            replica = self._replica(stored, response_id, "response_id")
            exchange = Exchange(
                self._upstream.http,
                self._upstream.timeouts,
                headers=ticket.headers,
                drain=self._drain,
            )
            context.outcome, context.replica = exchange.outcome, replica.url
            path = route.value.replace("{id}", response_id)
            query = (scope.get("query_string") or b"").decode("latin-1")
            url = URL(f"{replica.url}{path}" + (f"?{query}" if query else ""), encoded=True)
            headers = upstream_headers(scope["headers"], context.request_id, replica.authorization)
            request = UpstreamRequest(
                url, replica.url, b"", headers, context.request_id, method=scope["method"]
            )
            with replica.lease():
                await exchange.run(receive, send, request)
        finally:
            await self._limits.finish(ticket, 0)

    async def creation(
        self,
        payload: dict[str, Any],
        principal: Principal,
        pool: Pool,
        context: RequestContext,
        send: Send,
    ) -> Creation:
        """The bookkeeping of one POST /v1/responses: the replica it must go to (that of
        its `previous_response_id`), and the send that remembers the new id."""
        pinned = None
        previous = payload.get(PREVIOUS)
        if previous is not None:
            stored = await self._owned(previous, principal, PREVIOUS)
            if stored.model != pool.model:
                raise InvalidRequest(
                    f"Response '{previous}' was made by model '{stored.model}'; continue it "
                    "with that model.",
                    param=PREVIOUS,
                )
            pinned = self._replica(stored, previous, PREVIOUS)
        remember = payload.get("store") is not False
        owner = (pool.model, principal.tenant, principal.id)
        return Creation(self._store if remember else None, owner, context, send, pinned)

    async def _owned(self, response_id: str, principal: Principal, param: str) -> StoredResponse:
        stored = await self._lookup(response_id, principal)
        if stored is None:
            raise _not_found(response_id, param)
        return stored

    async def _lookup(self, response_id: str, principal: Principal) -> StoredResponse | None:
        """The record of an id the principal may name; None for an unknown, expired or
        another tenant's id alike, so ids never leak."""
        if not RESPONSE_ID.fullmatch(response_id):
            return None
        stored = await self._store.lookup(response_id)
        if stored is None or stored.tenant != principal.tenant:
            return None
        return stored if principal.may_use(stored.model) else None

    def _replica(self, stored: StoredResponse, response_id: str, param: str) -> Replica:
        try:
            replicas = self._pools.get(stored.model).replicas
        except ModelNotFound:
            replicas = []
        for replica in replicas:
            if replica.url == stored.replica and replica.usable:
                return replica
        logger.info("response %s: its replica left or is unusable", response_id)
        raise ResponseNotFound(
            f"Response with id '{response_id}' is no longer available: the model server "
            "that stored it has left this deployment or cannot be reached.",
            param=param,
        )


def _not_found(response_id: str, param: str) -> ResponseNotFound:
    return ResponseNotFound(f"Response with id '{response_id}' not found.", param=param)


class Creation:
    """One POST /v1/responses on its way: the framing that reads its id and usage, and
    the send that stores where the response lives before the client reads its id."""

    def __init__(
        self,
        store: ResponseStore | None,
        owner: tuple[str, str, str],
        context: RequestContext,
        send: Send,
        pinned: Replica | None,
    ) -> None:
        self.pinned = pinned
        self._watch = watch = ResponseWatch()
        self.framing = Framing(watch.stream, watch.body, stream_error_event)
        self._store = store
        self._owner = owner
        self._context = context
        self._send = send

    async def send(self, message: Message) -> None:
        store, response_id = self._store, self._watch.id
        if store is not None and response_id is not None and self._context.replica is not None:
            self._store = None  # once
            model, tenant, principal = self._owner
            stored = StoredResponse(model, self._context.replica, tenant, principal)
            try:
                await store.remember(response_id, stored)
            except ResponseStoreUnavailable:
                # The answer is under way: it goes on; only a later GET will miss it.
                logger.warning("response %s could not be stored; GET by id will 404", response_id)
        await self._send(message)
