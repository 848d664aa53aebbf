"""The shared key store: Redis, for several gateway replicas.

    {prefix}:key:{id}          hash: `record` (JSON, see records.py), `last_used_at`
    {prefix}:keys              sorted set of every id (score 0: ordered by id)
    {prefix}:tenant:{tenant}   sorted set of the tenant's ids
    {prefix}:key-changes       pub/sub channel: the id of every key created or updated
    {prefix}:layout            the layout version (gateway/redis_layout.py)

Writes are WATCH/MULTI transactions on the key's hash, retried on conflict,
and publish inside the same transaction, so a change and its notice go out
together. `last_used_at` is a separate field moved forward by a Lua script,
so the frequent `record_use` never conflicts with an admin's update.

The layout version is checked before the first read or write (at the gateway's
start, or later if Redis was down then): a newer one is refused, never misread.

Durability is Redis's: run it with `appendonly yes`, or a restart loses keys.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import replace
from datetime import datetime
from typing import TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline, PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError, WatchError

from gateway.keys.records import (
    KeyChanges,
    KeyRecord,
    format_time,
    parse_time,
    record_from_json,
    record_to_json,
)
from gateway.keys.store import (
    KeyExists,
    KeyNotFound,
    KeyPage,
    KeyStoreError,
    KeyStoreUnavailable,
    check_page,
)
from gateway.redis_layout import NewerLayout, settle_layout

T = TypeVar("T")

WATCH_ATTEMPTS = 16
SUBSCRIBE_TIMEOUT_S = 5.0
PING_INTERVAL_S = 1.0
# The feed is declared dead after this many ping intervals without a word from Redis.
SILENT_PINGS = 3

# Moves last_used_at forward only, and never creates a hash for an unknown key.
_TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local old = redis.call('HGET', KEYS[1], 'last_used_at')
if old and old >= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'last_used_at', ARGV[1])
return 1
"""


class RedisKeyStore:
    """A `KeyStore` in Redis, shared by every replica that uses the same `prefix`.

    The client is the caller's unless the store made it (`connect`): `close`
    closes only a client the store owns.
    """

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "vgw",
        owns_client: bool = False,
        ping_interval_s: float = PING_INTERVAL_S,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._owns_client = owns_client
        self._ping_interval_s = ping_interval_s
        self._touch = client.register_script(_TOUCH)
        self._layout_checked = False
        self.channel = f"{prefix}:key-changes"

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        prefix: str = "vgw",
        timeout_s: float = 2.0,
        ping_interval_s: float = PING_INTERVAL_S,
    ) -> RedisKeyStore:
        """A store with its own client: bounded timeouts and few retries, so an outage
        reaches the admin as an error within seconds instead of a hang; TCP keepalive
        so the kernel, too, notices a peer that vanished."""
        client = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            socket_keepalive=True,
            socket_keepalive_options=_keepalive_options(),
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
        )
        return cls(client, prefix=prefix, owns_client=True, ping_interval_s=ping_interval_s)

    async def check_layout(self) -> None:
        """Stamp or migrate the layout; `KeyStoreError` if it is newer than this gateway's."""
        with _mapped("check the layout version"):
            try:
                await settle_layout(self._client, self._prefix)
            except (NewerLayout, ValueError) as exc:
                raise KeyStoreError(str(exc)) from exc
        self._layout_checked = True

    async def create(self, record: KeyRecord) -> None:
        await self._layout()
        key = self._key(record.id)

        async def step(pipe: Pipeline) -> None:
            if await pipe.exists(key):
                raise KeyExists(record.id)
            pipe.multi()  # type: ignore[no-untyped-call]  # unannotated in redis-py
            pipe.hset(key, "record", _record_json(record))
            if record.last_used_at is not None:
                pipe.hset(key, "last_used_at", format_time(record.last_used_at))
            pipe.zadd(f"{self._prefix}:keys", {record.id: 0})
            pipe.zadd(self._tenant_index(record.tenant), {record.id: 0})
            pipe.publish(self.channel, record.id)
            await pipe.execute()

        await self._watched(f"create key {record.id}", key, step)

    async def get(self, key_id: str) -> KeyRecord | None:
        await self._layout()
        with _mapped(f"read key {key_id}"):
            fields = await self._client.hgetall(self._key(key_id))
        return _record(fields) if fields else None

    async def list(
        self, *, tenant: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> KeyPage:
        check_page(limit)
        await self._layout()
        index = f"{self._prefix}:keys" if tenant is None else self._tenant_index(tenant)
        with _mapped("list keys"):
            ids = await self._client.zrangebylex(
                index, "-" if cursor is None else f"({cursor}", "+", start=0, num=limit + 1
            )
            async with self._client.pipeline(transaction=False) as pipe:
                for key_id in ids[:limit]:
                    pipe.hgetall(self._key(_text(key_id)))
                rows = await pipe.execute()
        page = [_record(fields) for fields in rows if fields]
        return page, (_text(ids[limit - 1]) if len(ids) > limit else None)

    async def update(self, key_id: str, changes: KeyChanges) -> KeyRecord:
        await self._layout()
        key = self._key(key_id)

        async def step(pipe: Pipeline) -> KeyRecord:
            fields = await pipe.hgetall(key)
            if not fields:
                raise KeyNotFound(key_id)
            updated = changes.apply(_record(fields))
            pipe.multi()  # type: ignore[no-untyped-call]  # unannotated in redis-py
            pipe.hset(key, "record", _record_json(updated))
            pipe.publish(self.channel, key_id)
            await pipe.execute()
            return updated

        return await self._watched(f"update key {key_id}", key, step)

    async def record_use(self, key_id: str, when: datetime) -> None:
        with _mapped(f"record the use of key {key_id}"):
            await self._touch(keys=[self._key(key_id)], args=[format_time(when)])

    def changes(self) -> AbstractAsyncContextManager[AsyncIterator[str]]:
        """Key ids published by any replica. Redis pub/sub does not queue for an absent
        subscriber: the feed raises `KeyStoreUnavailable` when redis-py re-subscribed
        after a reconnect, or when Redis answered no PING for a few intervals (a
        half-open connection). A cache should still give its entries a short lifetime."""
        return self._subscribe()

    async def close(self) -> None:
        if self._owns_client:
            with _mapped("close the connection"):
                await self._client.aclose()

    @asynccontextmanager
    async def _subscribe(self) -> AsyncIterator[AsyncIterator[str]]:
        async with self._client.pubsub() as pubsub:
            with _mapped("subscribe to key changes"):
                await pubsub.subscribe(self.channel)
                # The subscription is live once Redis confirms it.
                confirmed = await pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT_S)
            if confirmed is None:
                raise KeyStoreUnavailable("Redis did not confirm the key-changes subscription")
            yield _feed(pubsub, self._ping_interval_s)

    async def _watched(self, action: str, key: str, step: Callable[[Pipeline], Awaitable[T]]) -> T:
        """Run `step` with `key` watched, again if another client wrote it meanwhile."""
        with _mapped(action):
            for attempt in range(WATCH_ATTEMPTS):
                async with self._client.pipeline(transaction=True) as pipe:
                    try:
                        await pipe.watch(key)
                        return await step(pipe)
                    except WatchError:
                        pass
                await asyncio.sleep(_backoff_s(attempt))
        raise KeyStoreUnavailable(f"could not {action}: it kept changing concurrently")

    async def _layout(self) -> None:
        if not self._layout_checked:  # once per store object: a flag on the request path
            await self.check_layout()

    def _key(self, key_id: str) -> str:
        return f"{self._prefix}:key:{key_id}"

    def _tenant_index(self, tenant: str) -> str:
        return f"{self._prefix}:tenant:{tenant}"


async def _feed(pubsub: PubSub, ping_interval_s: float) -> AsyncIterator[str]:
    """The published ids; PINGs Redis every interval, so silence means a dead connection."""
    heard = pinged = time.monotonic()
    while True:
        with _mapped("receive key changes"):
            message = await pubsub.get_message(timeout=ping_interval_s)
            now = time.monotonic()
            if now - pinged >= ping_interval_s:
                await pubsub.ping()
                pinged = now
        if message is None:
            if now - heard > ping_interval_s * SILENT_PINGS:
                raise KeyStoreUnavailable("Redis stopped answering on the key-changes feed")
            continue
        heard = now
        kind = message.get("type")
        if kind == "message":
            yield _text(message["data"])
        elif kind == "subscribe":
            # redis-py reconnected and subscribed again: notices sent meanwhile are lost.
            raise KeyStoreUnavailable("the key-changes feed reconnected")


def _backoff_s(attempt: int, draw: Callable[[float, float], float] = random.uniform) -> float:
    """The wait after a lost race: jittered, so writers racing for one key do not collide
    again; at most 2 ms after the first attempt, doubling, never more than 100 ms."""
    return draw(0, min(0.1, 0.002 * 2**attempt))


def _keepalive_options() -> dict[int, int]:
    wanted = {"TCP_KEEPIDLE": 5, "TCP_KEEPINTVL": 2, "TCP_KEEPCNT": 3}
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}


@contextmanager
def _mapped(action: str) -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        raise KeyStoreUnavailable(f"could not {action} in the Redis key store: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _record_json(record: KeyRecord) -> str:
    return record_to_json(replace(record, last_used_at=None))  # kept in its own field


def _record(fields: Mapping[bytes | str, bytes | str]) -> KeyRecord:
    text = {_text(name): _text(value) for name, value in fields.items()}
    try:
        record = record_from_json(text["record"])
        return replace(record, last_used_at=parse_time(text.get("last_used_at")))
    except (KeyError, ValueError) as exc:
        raise KeyStoreError(f"a stored key record is invalid: {exc!r}") from exc
