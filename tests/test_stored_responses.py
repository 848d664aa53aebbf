"""Who may name a stored response, which replica it is sent back to, and when its id is kept.

Real objects throughout: the in-memory store, real pools of real replicas (one made
unusable by failed health checks), real admissions, and a real redis-server that has
been stopped for a store that cannot be written. The end-to-end half (a gateway in
front of simulators) is tests/test_responses.py; these run first in this module's
mutation run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from gateway.asgi import Message
from gateway.errors import InvalidRequest
from gateway.limits.admission import Admissions, RateLimited
from gateway.limits.memory import MemoryRateLimiter
from gateway.metrics import Metrics
from gateway.principal import Limits, Principal, Rates
from gateway.proxy.framing import Framing
from gateway.proxy.response_store import (
    MemoryResponseStore,
    ResponseStore,
    ResponseStoreUnavailable,
    StoredResponse,
)
from gateway.proxy.response_store_redis import RedisResponseStore
from gateway.proxy.responses import stream_error_event
from gateway.proxy.routes import Route
from gateway.proxy.stored_responses import (
    PREVIOUS,
    Creation,
    ResponseNotFound,
    StoredResponses,
)
from gateway.proxy.upstream import Timeouts, UpstreamClient
from gateway.request_record import RequestContext
from gateway.upstreams.pool import PickPolicy, Pool, Pools, Replica
from tests.servers import RedisServer

pytestmark = pytest.mark.anyio

R1, R2, N1 = "http://127.0.0.1:9001", "http://127.0.0.1:9002", "http://127.0.0.1:9101"
OWNER = Principal("key-1", "acme", "key")
# The same tenant, another key: a tenant's ids are every one of its principals'.
COLLEAGUE = Principal("key-2", "acme", "key")
ONLY_N = Principal("key-3", "acme", "key", models=frozenset({"n"}))
STRANGER = Principal("key-9", "globex", "key")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class World:
    """A store, two configured models ("m" on R1 and R2, "n" on N1) and the service."""

    def __init__(self, store: ResponseStore | None = None) -> None:
        self.store = store if store is not None else MemoryResponseStore()
        policy = PickPolicy()
        self.m = Pool("m", [Replica(R1), Replica(R2)], policy)
        self.n = Pool("n", [Replica(N1)], policy)
        self.pools = Pools([self.m, self.n])
        upstream = UpstreamClient(Timeouts(1.0, 1.0, 1.0), ssl.create_default_context(), 1)
        limiter = MemoryRateLimiter()
        self.admissions = Admissions(
            limiter, Metrics(CollectorRegistry()), tenants={}, fail_open=False
        )
        self.service = StoredResponses(self.store, self.pools, upstream, self.admissions)

    async def get(
        self, principal: Principal, response_id: str, ctx: RequestContext, route: Route
    ) -> None:
        """`serve` for a call that must end before the upstream (it reads and sends nothing)."""
        await self.service.serve(
            {}, receive, send_nothing, ctx, principal, route=route, response_id=response_id
        )

    async def keep(self, response_id: str, model: str = "m", replica: str = R2) -> StoredResponse:
        stored = StoredResponse(model, replica, "acme", "key-1")
        await self.store.remember(response_id, stored)
        return stored


def context() -> RequestContext:
    return RequestContext("req-1", 0.0)


class Client:
    """The downstream send: each message, and what the store held for ID as it came."""

    def __init__(self, store: ResponseStore, response_id: str) -> None:
        self.store = store
        self.response_id = response_id
        self.messages: list[Message] = []
        self.held: list[StoredResponse | None] = []

    async def __call__(self, message: Message) -> None:
        self.held.append(await self.store.lookup(self.response_id))
        self.messages.append(message)


def start() -> Message:
    return {"type": "http.response.start", "status": 200, "headers": []}


def chunk(body: bytes) -> Message:
    return {"type": "http.response.body", "body": body, "more_body": True}


BODY_HEAD = b'{"id":"resp_new","object":"response","created_at":1,'


def created_event(response_id: str) -> bytes:
    # As vLLM sends it: the whole Response, its `usage` still null.
    response = {"id": response_id, "status": "in_progress", "usage": None}
    data = {"response": response, "sequence_number": 0, "type": "response.created"}
    return f"event: response.created\ndata: {json.dumps(data)}\n\n".encode()


def body_of(error: ResponseNotFound | InvalidRequest) -> object:
    return json.loads(error.body())


# The 404


def test_a_missing_response_is_vllm_s_404_naming_the_param() -> None:
    error = ResponseNotFound("Response with id 'resp_x' not found.", param="response_id")
    assert error.status == 404
    assert body_of(error) == {
        "error": {
            "message": "Response with id 'resp_x' not found.",
            "type": "invalid_request_error",
            "param": "response_id",
            "code": 404,
        }
    }


# _lookup: who may name which id


@pytest.mark.parametrize("response_id", ["../x", "a/b", "", "a" * 129, "resp x", "résp"])
async def test_an_id_outside_the_charset_is_never_looked_up(response_id: str) -> None:
    world = World()
    await world.keep(response_id)  # even were it stored, it is not asked for
    assert await world.store.lookup(response_id) is not None
    assert await world.service._lookup(response_id, OWNER) is None


@pytest.mark.parametrize("response_id", ["a", "a" * 128, "resp_0-Z_9"])
async def test_an_id_in_the_charset_is_looked_up(response_id: str) -> None:
    world = World()
    stored = await world.keep(response_id)
    assert await world.service._lookup(response_id, OWNER) == stored


async def test_only_the_owner_s_tenant_may_name_an_id_for_a_model_it_may_use() -> None:
    world = World()
    stored = await world.keep("resp_1")
    assert await world.service._lookup("resp_unknown", OWNER) is None
    assert await world.service._lookup("resp_1", STRANGER) is None
    assert await world.service._lookup("resp_1", ONLY_N) is None
    assert await world.service._lookup("resp_1", OWNER) == stored
    assert await world.service._lookup("resp_1", COLLEAGUE) == stored
    allowed = Principal("key-4", "acme", "jwt", models=frozenset({"m"}))
    assert await world.service._lookup("resp_1", allowed) == stored


@pytest.mark.parametrize("principal", [STRANGER, ONLY_N], ids=["other tenant", "model denied"])
async def test_another_s_id_is_the_same_404_as_an_unknown_one(principal: Principal) -> None:
    world = World()
    await world.keep("resp_1")
    for response_id in ("resp_1", "resp_unknown"):
        with pytest.raises(ResponseNotFound) as refused:
            await world.service._owned(response_id, principal, "some_param")
        assert refused.value.status == 404
        assert refused.value.param == "some_param"
        assert refused.value.message == f"Response with id '{response_id}' not found."
        assert body_of(refused.value) == {
            "error": {
                "message": f"Response with id '{response_id}' not found.",
                "type": "invalid_request_error",
                "param": "some_param",
                "code": 404,
            }
        }


async def test_the_owner_gets_the_record() -> None:
    world = World()
    stored = await world.keep("resp_1")
    assert await world.service._owned("resp_1", OWNER, "p") is stored


# _replica: the replica that holds it, or a 404


def gone(response_id: str) -> str:
    return (
        f"Response with id '{response_id}' is no longer available: the model server "
        "that stored it has left this deployment or cannot be reached."
    )


async def test_the_stored_replica_is_the_one_given() -> None:
    world = World()
    # R1 comes first, is usable and idle: only R2, the stored one, will do.
    stored = await world.keep("resp_1", replica=R2)
    assert world.service._replica(stored, "resp_1", "p") is world.m.replicas[1]
    stored = await world.keep("resp_2", replica=R1)
    assert world.service._replica(stored, "resp_2", "p") is world.m.replicas[0]


async def test_a_replica_reporting_a_served_model_is_found_through_it() -> None:
    world = World()
    world.n.replicas[0].models = frozenset({"n-lora"})
    stored = await world.keep("resp_1", model="n-lora", replica=N1)
    assert world.service._replica(stored, "resp_1", "p") is world.n.replicas[0]


def left(world: World) -> None:
    world.m.update("static", [R1], None)  # R2 drains and, idle, leaves the pool


def unusable(world: World) -> None:
    assert world.m.replicas[1].check_failed(1, now=1.0)


def unconfigured(world: World) -> None:
    world.pools = Pools([world.n])
    world.service._pools = world.pools


@pytest.mark.parametrize("take_away", [left, unusable, unconfigured])
async def test_a_response_whose_replica_is_gone_is_a_404_saying_so(
    take_away: object, caplog: pytest.LogCaptureFixture
) -> None:
    world = World()
    stored = await world.keep("resp_1", replica=R2)
    assert callable(take_away)
    take_away(world)
    assert world.m.replicas[0].usable  # R1 is there, and usable: not the one it needs
    caplog.set_level(logging.INFO, logger="gateway.proxy")
    with pytest.raises(ResponseNotFound) as refused:
        world.service._replica(stored, "resp_1", "the_param")
    assert refused.value.status == 404
    assert refused.value.param == "the_param"
    assert refused.value.message == gone("resp_1")
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("gateway.proxy", logging.INFO, "response resp_1: its replica left or is unusable")
    ]


async def test_a_draining_or_ejected_replica_does_not_serve_its_responses() -> None:
    world = World()
    stored = await world.keep("resp_1", replica=R2)
    world.m.replicas[1].ejected = True
    with pytest.raises(ResponseNotFound):
        world.service._replica(stored, "resp_1", "p")
    world.m.replicas[1].ejected = False
    world.m.replicas[1].draining = True
    with pytest.raises(ResponseNotFound):
        world.service._replica(stored, "resp_1", "p")


# creation: where a new response goes, and whether its id is kept


async def test_a_first_turn_is_not_pinned_and_its_id_is_kept_for_its_owner() -> None:
    world = World()
    for payload in ({"input": "hi"}, {"input": "hi", PREVIOUS: None}, {"store": True}):
        made = await world.service.creation(
            payload, COLLEAGUE, world.m, context(), Client(world.store, "x")
        )
        assert isinstance(made, Creation)
        assert made.pinned is None
        assert isinstance(made.framing, Framing)
        assert made.framing.error_event is stream_error_event  # a Responses stream's own
    ctx = context()
    client = Client(world.store, "resp_new")
    made = await world.service.creation({"input": "hi"}, COLLEAGUE, world.m, ctx, client)
    made.framing.body_usage().feed(BODY_HEAD)
    ctx.replica = R1
    await made.send(start())
    assert client.held == [StoredResponse("m", R1, "acme", "key-2")]


@pytest.mark.parametrize("parsed", [False, True])
async def test_a_follow_up_goes_to_the_replica_of_the_previous_turn(parsed: bool) -> None:
    world = World()
    # A record read back from Redis holds an equal name, not the pool's own string.
    model = orjson.loads(b'{"model":"m"}')["model"] if parsed else world.m.model
    assert model == world.m.model and (model is not world.m.model) == parsed
    await world.keep("resp_1", model=model, replica=R2)
    payload = {"input": "more", PREVIOUS: "resp_1"}
    made = await world.service.creation(
        payload, COLLEAGUE, world.m, context(), Client(world.store, "x")
    )
    assert made.pinned is world.m.replicas[1]


async def test_a_follow_up_with_another_model_is_refused() -> None:
    world = World()
    await world.keep("resp_1", model="n", replica=N1)
    payload = {"input": "more", PREVIOUS: "resp_1"}
    with pytest.raises(InvalidRequest) as refused:
        await world.service.creation(payload, OWNER, world.m, context(), Client(world.store, "x"))
    assert refused.value.status == 400
    assert refused.value.param == PREVIOUS == "previous_response_id"
    assert refused.value.message == (
        "Response 'resp_1' was made by model 'n'; continue it with that model."
    )
    # And the other way round: a name that sorts first is another model too.
    await world.keep("resp_2", model="m", replica=R2)
    payload = {"input": "more", PREVIOUS: "resp_2"}
    with pytest.raises(InvalidRequest):
        await world.service.creation(payload, OWNER, world.n, context(), Client(world.store, "x"))


@pytest.mark.parametrize("previous", ["resp_unknown", "resp_theirs", "../resp_1"])
async def test_a_follow_up_of_a_response_not_its_own_is_a_404(previous: str) -> None:
    world = World()
    await world.keep("resp_1")
    await world.store.remember("resp_theirs", StoredResponse("m", R2, "globex", "key-9"))
    payload = {"input": "more", PREVIOUS: previous}
    with pytest.raises(ResponseNotFound) as refused:
        await world.service.creation(payload, OWNER, world.m, context(), Client(world.store, "x"))
    assert refused.value.param == "previous_response_id"
    assert refused.value.message == f"Response with id '{previous}' not found."


async def test_a_follow_up_of_a_response_whose_replica_left_is_a_404_saying_so() -> None:
    world = World()
    await world.keep("resp_1", replica=R2)
    left(world)
    payload = {"input": "more", PREVIOUS: "resp_1"}
    with pytest.raises(ResponseNotFound) as refused:
        await world.service.creation(payload, OWNER, world.m, context(), Client(world.store, "x"))
    assert refused.value.param == "previous_response_id"
    assert refused.value.message == gone("resp_1")


async def test_a_response_not_to_be_stored_is_not_remembered() -> None:
    world = World()
    ctx = context()
    client = Client(world.store, "resp_new")
    payload = {"input": "hi", "store": False}
    made = await world.service.creation(payload, OWNER, world.m, ctx, client)
    made.framing.body_usage().feed(BODY_HEAD)
    ctx.replica = R1
    await made.send(start())
    await made.send(chunk(b"{}"))
    assert client.messages == [start(), chunk(b"{}")]
    assert client.held == [None, None]


# Creation.send: the id is kept before the client reads it, once


async def creation(world: World, ctx: RequestContext, client: Client) -> Creation:
    return await world.service.creation({"stream": True}, OWNER, world.n, ctx, client)


async def test_the_id_is_stored_before_the_message_that_carries_it_is_sent() -> None:
    world = World()
    ctx = context()
    client = Client(world.store, "resp_new")
    made = await creation(world, ctx, client)
    scanner = made.framing.stream_usage(strip=False)
    ctx.replica = N1
    await made.send(start())  # no id yet: passed on, nothing stored
    assert client.held == [None]
    scanner.feed(created_event("resp_new"))
    await made.send(chunk(created_event("resp_new")))
    kept = StoredResponse("n", N1, "acme", "key-1")
    assert client.held == [None, kept]
    ctx.replica = R1  # a later send would store another record: it stores none
    await made.send(chunk(b"event: response.completed\n\n"))
    assert client.held == [None, kept, kept]
    assert await world.store.lookup("resp_new") == kept
    assert client.messages == [
        start(),
        chunk(created_event("resp_new")),
        chunk(b"event: response.completed\n\n"),
    ]


async def test_nothing_is_stored_until_the_replica_is_known() -> None:
    world = World()
    ctx = context()
    client = Client(world.store, "resp_new")
    made = await creation(world, ctx, client)
    made.framing.body_usage().feed(BODY_HEAD)
    await made.send(start())
    assert client.held == [None]
    assert client.messages == [start()]
    ctx.replica = N1
    await made.send(chunk(b"x"))
    assert client.held == [None, StoredResponse("n", N1, "acme", "key-1")]


async def test_an_answer_without_an_id_stores_nothing() -> None:
    world = World()
    ctx = context()
    ctx.replica = N1
    client = Client(world.store, "resp_new")
    made = await creation(world, ctx, client)
    made.framing.body_usage().feed(b'{"error":{"message":"bad"}}')
    await made.send(start())
    await made.send(chunk(b'{"error":{"message":"bad"}}'))
    assert client.held == [None, None]
    assert len(client.messages) == 2


@pytest.fixture
def stopped_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    server.stop()
    yield server


async def test_a_store_that_cannot_be_written_leaves_the_answer_going(
    stopped_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisResponseStore.connect(stopped_redis.url, timeout_s=2.0)
    memory = MemoryResponseStore()
    try:
        world = World(store)
        ctx = context()
        ctx.replica = N1
        client = Client(memory, "resp_new")
        made = await creation(world, ctx, client)
        made.framing.body_usage().feed(BODY_HEAD)
        caplog.set_level(logging.INFO, logger="gateway.proxy")
        await made.send(start())
        await made.send(chunk(b"x"))  # tried once only: no second warning
        assert client.messages == [start(), chunk(b"x")]
        assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
            (logging.WARNING, "response resp_new could not be stored; GET by id will 404")
        ]
        # Reading it is another matter: a follow-up cannot be routed, and says so.
        with pytest.raises(ResponseStoreUnavailable):
            await world.service._lookup("resp_new", OWNER)
    finally:
        await store.close()


# serve, up to the upstream: the lookup, the admission, the 404s


async def test_a_get_of_another_s_id_is_a_404_and_still_counted() -> None:
    world = World()
    await world.keep("resp_1")
    limited = Principal("key-9", "globex", "key", limits=Limits(requests_per_minute=1))
    ctx = context()
    with pytest.raises(ResponseNotFound) as refused:
        await world.get(limited, "resp_1", ctx, Route.RESPONSE)
    assert refused.value.param == "response_id"
    assert refused.value.message == "Response with id 'resp_1' not found."
    assert ctx.model is None and ctx.known_model is False and ctx.replica is None
    with pytest.raises(RateLimited):
        await world.get(limited, "resp_2", ctx, Route.RESPONSE)


async def test_a_get_is_admitted_against_the_stored_model_and_released() -> None:
    world = World()
    await world.keep("resp_1", replica=R2)
    left(world)
    # One at a time, and one request a minute on model "m" only.
    limits = Limits(concurrent_requests=1, models={"m": Rates(requests_per_minute=1)})
    principal = Principal("key-1", "acme", "key", limits=limits)
    ctx = context()
    for response_id in ("resp_unknown", "resp_unknown"):  # model "": not "m"'s to count
        with pytest.raises(ResponseNotFound):
            await world.get(principal, response_id, ctx, Route.RESPONSE)
    with pytest.raises(ResponseNotFound) as refused:
        await world.get(principal, "resp_1", ctx, Route.RESPONSE_CANCEL)
    assert refused.value.param == "response_id"
    assert refused.value.message == gone("resp_1")
    assert ctx.model == "m" and ctx.known_model is True
    with pytest.raises(RateLimited):  # counted against model "m"
        await world.get(principal, "resp_1", ctx, Route.RESPONSE)


async def test_a_get_reserves_and_spends_no_tokens() -> None:
    world = World()
    await world.keep("resp_1", replica=R2)
    left(world)
    principal = Principal("key-1", "acme", "key", limits=Limits(tokens_per_minute=2))
    held = await world.admissions.admit(principal, "m", 1)  # one of the minute's two tokens
    for response_id in ("resp_1", "resp_unknown", "resp_1", "resp_1"):
        with pytest.raises(ResponseNotFound):
            await world.get(principal, response_id, context(), Route.RESPONSE)
    await world.admissions.finish(held, 1)
    ticket = await world.admissions.admit(principal, "m", 1)  # none spent by the GETs
    await world.admissions.finish(ticket, 1)
    with pytest.raises(RateLimited):  # and none given back by them
        await world.admissions.admit(principal, "m", 1)


async def receive() -> Message:
    raise AssertionError("nothing is read before the upstream is reached")


async def send_nothing(message: Message) -> None:
    raise AssertionError("nothing is sent before the upstream is reached")


# serve, through to the replica: what it is asked


class RecordingReplica:
    """A replica on a real socket that records each request head and answers `{}`. The
    simulator does not read a retrieve's query (vLLM's `stream`, `starting_after`); this
    shows what the gateway asked for."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.url = ""
        self.gate = asyncio.Event()  # answers wait for it
        self.gate.set()

    async def __aenter__(self) -> RecordingReplica:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                self.heads.append(await reader.readuntil(b"\r\n\r\n"))
                await self.gate.wait()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
                writer.write(b"content-length: 2\r\n\r\n{}")
                await writer.drain()
        writer.close()


@pytest.mark.parametrize("kind", ["native", "aiohttp"])
async def test_a_get_reaches_the_replica_with_its_path_and_query_as_sent(kind: str) -> None:
    async with RecordingReplica() as replica:
        store = MemoryResponseStore()
        await store.remember("resp_1", StoredResponse("m", replica.url, "acme", "key-1"))
        pools = Pools([Pool("m", [Replica(replica.url)], PickPolicy())])
        upstream = UpstreamClient(Timeouts(5.0, 5.0, 5.0), ssl.create_default_context(), 4, kind)
        await upstream.open()
        admissions = Admissions(
            MemoryRateLimiter(), Metrics(CollectorRegistry()), tenants={}, fail_open=False
        )
        service = StoredResponses(store, pools, upstream, admissions)
        sent: list[Message] = []

        async def collect(message: Message) -> None:
            sent.append(message)

        try:
            calls = [
                (b"stream=false&starting_after=3&x=a%2Fb%20c", Route.RESPONSE),
                (b"", Route.RESPONSE_CANCEL),
            ]
            for query, route in calls:
                sent.clear()
                scope = {"method": "POST" if route is Route.RESPONSE_CANCEL else "GET"}
                scope |= {"query_string": query, "headers": [(b"host", b"gateway")]}
                await service.serve(
                    scope, receive, collect, context(), OWNER, route=route, response_id="resp_1"
                )
                assert sent[0]["status"] == 200
        finally:
            await upstream.close()
    first, second = (head.split(b"\r\n", 1)[0] for head in replica.heads)
    assert first == b"GET /v1/responses/resp_1?stream=false&starting_after=3&x=a%2Fb%20c HTTP/1.1"
    assert second == b"POST /v1/responses/resp_1/cancel HTTP/1.1"


async def test_a_get_in_flight_holds_no_tokens() -> None:
    principal = Principal("key-1", "acme", "key", limits=Limits(tokens_per_minute=1))
    async with RecordingReplica() as replica:
        store = MemoryResponseStore()
        await store.remember("resp_1", StoredResponse("m", replica.url, "acme", "key-1"))
        pools = Pools([Pool("m", [Replica(replica.url)], PickPolicy())])
        upstream = UpstreamClient(Timeouts(5.0, 5.0, 5.0), ssl.create_default_context(), 4)
        await upstream.open()
        admissions = Admissions(
            MemoryRateLimiter(), Metrics(CollectorRegistry()), tenants={}, fail_open=False
        )
        service = StoredResponses(store, pools, upstream, admissions)
        await admissions.finish(await admissions.admit(principal, "m", 1), 1)  # the minute's
        replica.gate.clear()
        scope = {"method": "GET", "query_string": b"", "headers": [(b"host", b"gateway")]}
        sent: list[Message] = []

        async def collect(message: Message) -> None:
            sent.append(message)

        getting = asyncio.ensure_future(
            service.serve(
                scope, receive, collect, context(), principal,
                route=Route.RESPONSE, response_id="resp_1",
            )
        )  # fmt: skip
        try:
            for _ in range(500):
                if replica.heads:
                    break
                await asyncio.sleep(0.01)
            assert replica.heads, "the GET did not reach the replica"
            with pytest.raises(RateLimited):  # the GET in flight gave no token back
                await admissions.admit(principal, "m", 1)
        finally:
            replica.gate.set()
            await getting
            await upstream.close()
        assert sent[0]["status"] == 200
