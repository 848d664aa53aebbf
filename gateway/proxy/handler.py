"""The proxy's ASGI app: allowlisted routes in, one replica's answer out."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

from gateway.asgi import RawHeaders, Receive, Scope, Send, send_bytes
from gateway.drain import Drain
from gateway.errors import InvalidRequest, ModelNotFound, UpstreamError
from gateway.limits.admission import Admissions, Ticket
from gateway.limits.quota_admission import QuotaAdmissions
from gateway.metrics import Metrics
from gateway.principal import Principal
from gateway.proxy.admission_gate import AdmissionGate, Admitted
from gateway.proxy.affinity import Affinity
from gateway.proxy.aliases import ModelRouter, Shedding, retarget
from gateway.proxy.anthropic import edit_messages
from gateway.proxy.apis import ModelApis
from gateway.proxy.audio import edit_upload, parse_upload
from gateway.proxy.body import ClientGone, parse_request, read_body
from gateway.proxy.contract import read_terms
from gateway.proxy.forward import Exchange, UpstreamRequest, failure_kind
from gateway.proxy.framing import Framing, framing_of
from gateway.proxy.headers import header_value, upstream_headers
from gateway.proxy.model_list import ModelCatalog
from gateway.proxy.pooling import edit_pooling
from gateway.proxy.request_edit import EditedRequest, TokenPolicy, edit_request
from gateway.proxy.response_store import MemoryResponseStore, ResponseStore
from gateway.proxy.responses import edit_responses
from gateway.proxy.routes import Route, match_route
from gateway.proxy.stored_responses import StoredResponses
from gateway.proxy.upstream import UpstreamClient
from gateway.proxy.upstream_meters import UpstreamMeters
from gateway.request_record import Outcome, RequestContext, context_of
from gateway.upstreams.pool import Pool, Pools, Replica
from gateway.usage.records import TokenUsage

if TYPE_CHECKING:
    from gateway.tracing.spans import RequestTracer

OWNER = "vllm-gateway"
MAX_POLICIES = 10_000
logger = logging.getLogger("gateway.proxy")


class Authenticate(Protocol):
    async def authenticate(self, header: bytes | None) -> Principal: ...


class RecordUsage(Protocol):
    def record(
        self, principal: str, tenant: str, model: str, usage: TokenUsage, *, estimated: bool
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class ProxyOptions:
    max_body_bytes: int
    refuse_over_cap: bool = False
    # Completion tokens a request with no max_tokens (under no cap) reserves.
    default_reserve: int = 1024
    # Sequences (prompts x choices, or embedding inputs) one request may ask for, unless
    # the principal's own limits or its tenant's say otherwise.
    max_batch: int | None = None
    tenant_max_batch: Mapping[str, int] = field(default_factory=dict)
    # The max_tokens cap of a principal without one of its own, by tenant.
    tenant_max_tokens: Mapping[str, int] = field(default_factory=dict)
    # Other replicas tried for a request that provably never reached an engine.
    retries: int = 2
    # Consecutive failed requests that eject a replica until a health check passes.
    eject_after: int = 3
    # Refuse at once when every replica has more requests waiting than this.
    shed_waiting_above: int | None = None
    shed_status: int = 503
    shed_retry_after: int = 2
    max_upload_bytes: int = 25 * 1024 * 1024  # multipart/form-data (the audio routes)
    apis: ModelApis = field(default_factory=ModelApis)
    # Alias -> the models it stands for, in order (gateway.proxy.aliases).
    aliases: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # Each conversation to one replica (gateway.proxy.affinity); None: least busy.
    affinity: Affinity | None = None


class ProxyApp:
    def __init__(
        self,
        pools: Pools,
        upstream: UpstreamClient,
        auth: Authenticate,
        *,
        limits: Admissions,
        quotas: QuotaAdmissions | None = None,
        usage: RecordUsage,
        options: ProxyOptions,
        metrics: Metrics,
        tracer: RequestTracer | None = None,
        drain: Drain | None = None,
        responses: ResponseStore | None = None,
    ) -> None:
        self._pools = pools
        store = responses or MemoryResponseStore()
        self._stored = StoredResponses(store, pools, upstream, limits, drain=drain)
        shedding = Shedding(
            options.shed_waiting_above, options.shed_status, options.shed_retry_after
        )
        self._router = ModelRouter(pools, options.aliases, shedding)
        self._catalog = ModelCatalog(self._router)
        self._drain = drain
        self._upstream = upstream
        self._auth = auth
        self._gate = AdmissionGate(limits, quotas)
        self._usage = usage
        self._options = options
        self._metrics = metrics
        self._tracer = tracer
        self._meters = UpstreamMeters(metrics, options.eject_after)
        self._policies: dict[tuple[int | None, int | None], TokenPolicy] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = context_of(scope)
        # The allowlist comes first: an unknown path is a 404 whoever asks.
        route, model = match_route(scope["method"], scope.get("raw_path") or b"")
        context.route = route.value
        principal = await self._auth.authenticate(_credential(scope["headers"], route))
        context.principal = principal
        if context.span is not None:
            context.span.add_event("gateway.authenticated")
        if route is Route.MODELS:
            await send_bytes(send, 200, self._catalog.listing(principal))
        elif route is Route.MODEL:
            await send_bytes(send, 200, self._catalog.card(model or "", principal))
        elif route.by_response_id:
            await self._stored.serve(
                scope, receive, send, context, principal, route=route, response_id=model or ""
            )
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
        payload, body, model = await self._read(scope, receive, context, principal, route)
        edited, pool = self._edit(route, payload, body, principal, model)
        # An alias's request is the serving model's: its limits, usage and metrics.
        model = context.model = pool.model
        creation = None
        if route is Route.RESPONSES:
            creation = await self._stored.creation(payload, principal, pool, context, send)
        affinity = self._options.affinity
        key = None
        if affinity is not None and (creation is None or creation.pinned is None):
            key = affinity.key(route, payload, scope["headers"], principal.tenant)
        admitted = await self._gate.admit(principal, model, edited)
        ticket = admitted.ticket
        if context.span is not None:
            context.span.add_event("gateway.admitted")
        context.outcome = Outcome()
        framing = framing_of(route)
        if creation is not None:
            send, framing = creation.send, creation.framing
        try:
            outcome = await self._attempts(
                scope,
                receive,
                send,
                context,
                pool=pool,
                edited=edited,
                ticket=ticket,
                framing=framing,
                pinned=None if creation is None else creation.pinned,
                key=key,
            )
        except BaseException:
            # The attempt under way left its outcome on the record: an answer that had
            # started (cancelled from outside, say) is still charged; one that had not
            # (an error before any byte) costs nothing.
            outcome = context.outcome
            raise
        finally:
            await self._account(admitted, outcome, principal, model, edited)

    async def _read(
        self,
        scope: Scope,
        receive: Receive,
        context: RequestContext,
        principal: Principal,
        route: Route,
    ) -> tuple[dict[str, Any], bytes, str]:
        """The body, its fields and the model it names, once the caller may use that
        model on this route."""
        headers = scope["headers"]
        declared = header_value(headers, b"content-length")
        body = await read_body(
            receive,
            self._options.max_upload_bytes if route.audio else self._options.max_body_bytes,
            int(declared) if declared and declared.isdigit() else None,
        )
        payload, model = parse_upload(body, headers) if route.audio else parse_request(body)
        context.model = model
        self._router.check(model)
        context.known_model = True
        if not principal.may_use(model):
            # Exactly a missing model's 404: a 403 would tell which models exist.
            raise ModelNotFound(f"The model '{model}' does not exist.", param="model")
        if not self._router.is_alias(model):
            self._options.apis.check(route, model)  # before the contract: 404, then 400
        return payload, body, model

    def _edit(
        self, route: Route, payload: dict[str, Any], body: bytes, principal: Principal, model: str
    ) -> tuple[EditedRequest, Pool]:
        """The request contract, the serving model (shedding, aliases), then the key's
        caps: the body to send, the tokens to reserve and the pool to send it to."""
        policy = self._policy(principal)
        if route.audio:
            edited = edit_upload(payload, body, policy)
        elif route.pooling:
            edited = edit_pooling(route, payload, body, policy)
        elif route.anthropic or route is Route.RESPONSES:
            edit = edit_messages if route.anthropic else edit_responses
            edited = edit(route, payload, body, policy)
        else:
            terms = read_terms(route, payload, len(body))
            edited = edit_request(route, payload, body, terms, policy)
        pool = self._router.choose(model)
        if pool.model != model:
            # An alias's target; a model's own name was checked with the body (`_read`).
            self._options.apis.check(route, pool.model)
        if route.audio:
            # A form goes upstream byte for byte, so it cannot be renamed to a target.
            if pool.model != model:
                raise InvalidRequest(
                    f"'{model}' is an alias; the audio routes need a model's own name.",
                    param="model",
                )
            return edited, pool
        return retarget(edited, payload, pool.model), pool

    def _policy(self, principal: Principal) -> TokenPolicy:
        options = self._options
        limits = principal.limits
        max_batch = limits.max_batch
        if max_batch is None:
            max_batch = options.tenant_max_batch.get(principal.tenant, options.max_batch)
        max_tokens = limits.max_tokens
        if max_tokens is None:
            max_tokens = options.tenant_max_tokens.get(principal.tenant)
        # One policy per pair of caps: the rest of it is the gateway's own settings.
        caps = (max_tokens, max_batch)
        policy = self._policies.get(caps)
        if policy is None:
            if len(self._policies) >= MAX_POLICIES:
                self._policies.clear()
            policy = self._policies[caps] = TokenPolicy(
                max_tokens, options.refuse_over_cap, options.default_reserve, max_batch
            )
        return policy

    async def _attempts(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        context: RequestContext,
        *,
        pool: Pool,
        edited: EditedRequest,
        ticket: Ticket,
        framing: Framing,
        pinned: Replica | None = None,
        key: int | None = None,
    ) -> Outcome:
        """Forward to one replica (PINNED, when given: the only one that may answer; else
        the pick for affinity KEY, if any); to another only if the request provably
        never reached an engine and nothing was sent to the client. The last attempt's
        outcome."""
        tried: list[Replica] = []
        outcome = Outcome()
        for attempt in range(1 + self._options.retries):
            if pinned is not None:
                replica = pinned
            elif key is None:
                replica = pool.pick(exclude=tried)
            else:
                replica, first = pool.pick_for(key, exclude=tried)
                self._meters.affinity(pool.model, first)
            tried.append(replica)
            last = pinned is not None or attempt == self._options.retries
            last = last or not pool.has_usable(exclude=tried)
            exchange = Exchange(
                self._upstream.http,
                self._upstream.timeouts,
                strip_usage=edited.strip_usage,
                headers=[*ticket.headers, self._router.served_header(pool.model)],
                refuse_busy=not last,
                meters=self._meters.streams(pool.model),
                drain=self._drain,
                framing=framing,
            )
            outcome = exchange.outcome
            if context.span is not None and context.span.is_recording():
                outcome.finish_reasons = []
            # The record the access log and the request metrics read at the end.
            context.outcome, context.replica = outcome, replica.url
            request = self._request(scope, context, replica, edited)
            with replica.lease():
                try:
                    if context.span is None:
                        await exchange.run(receive, send, request)
                    else:
                        await self._traced(
                            exchange, receive, send, request, context=context, attempt=attempt
                        )
                except UpstreamError as exc:
                    self._meters.count(pool, replica, outcome, exc)
                    if exc.never_reached and not last:
                        logger.info("retrying on another replica: %s", exc.message)
                        continue
                    raise
            self._meters.count(pool, replica, outcome, None)
            return outcome
        return outcome

    async def _traced(
        self,
        exchange: Exchange,
        receive: Receive,
        send: Send,
        request: UpstreamRequest,
        *,
        context: RequestContext,
        attempt: int,
    ) -> None:
        """Run one attempt in a CLIENT span, whose context the replica receives."""
        tracer, parent = self._tracer, context.span
        assert tracer is not None and parent is not None  # a span exists only when tracing
        span = tracer.start_attempt(
            parent, context.route or "", context.model or "", request.replica, attempt + 1
        )
        tracer.propagate(span, request.headers)
        error: UpstreamError | None = None
        try:
            await exchange.run(receive, send, request)
        except UpstreamError as exc:
            error = exc
            raise
        finally:
            tracer.finish_attempt(span, exchange.outcome, failure_kind(exchange.outcome, error))

    def _request(
        self, scope: Scope, context: RequestContext, replica: Replica, edited: EditedRequest
    ) -> UpstreamRequest:
        headers = scope["headers"]
        return UpstreamRequest(
            replica.url_for(context.route or "", scope.get("query_string") or b""),
            replica.url,
            edited.body,
            upstream_headers(headers, context.request_id, replica.authorization),
            context.request_id,
        )

    async def _account(
        self,
        admitted: Admitted,
        outcome: Outcome,
        principal: Principal,
        model: str,
        edited: EditedRequest,
    ) -> None:
        """Settle the limits and quotas and record the usage, however the request ended.

        An answer (200) whose usage never arrived (a client that left mid-stream,
        a replica that sent none) is charged its whole reservation, and recorded
        as that estimate, marked estimated: never as 0. An answer that never
        started costs nothing, and so does one that generates nothing (a token count).
        """
        usage, gate = outcome.usage, self._gate
        if outcome.status != HTTPStatus.OK or not edited.billed:
            await gate.finish(admitted, model, 0 if usage is None else usage.total_tokens, (0, 0))
            return
        estimated = usage is None
        if usage is None:
            usage = TokenUsage(edited.prompt_estimate, edited.completion_reserve)
            self._metrics.child(self._metrics.usage_estimated, model).inc()
            await gate.finish(admitted, model, None, None)
        else:
            counts = usage.prompt_tokens, usage.completion_tokens
            await gate.finish(admitted, model, usage.total_tokens, counts)
        self._usage.record(principal.id, principal.tenant, model, usage, estimated=estimated)


def _credential(headers: RawHeaders, route: Route) -> bytes | None:
    """The Authorization header; on Anthropic's routes, `x-api-key` (what Anthropic's SDKs
    send) when there is none. Either way the credential is never forwarded."""
    authorization = header_value(headers, b"authorization")
    if authorization is None and route.anthropic:
        api_key = header_value(headers, b"x-api-key")
        if api_key is not None:
            return b"Bearer " + api_key
    return authorization
