"""Tenants in Redis, shared by every replica that uses the same prefix.

    {prefix}:tenants           hash: name -> the record's JSON
    {prefix}:tenants:version   integer: moved forward by every write

Each write and its version bump are one Lua script, so a replica that reads the
version after a write always finds the write's tenants.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.tenants.records import TenantRecord, record_from_json, record_to_json
from gateway.tenants.store import TenantExists, TenantNotFound, TenantStoreUnavailable

# ARGV: mode (create|replace|delete), name, body. Returns 1, or 0 when the name's
# presence is not what the mode needs.
_WRITE = """
local present = redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1
if (ARGV[1] == 'create') == present then return 0 end
if ARGV[1] == 'delete' then redis.call('HDEL', KEYS[1], ARGV[2])
else redis.call('HSET', KEYS[1], ARGV[2], ARGV[3]) end
redis.call('INCR', KEYS[2])
return 1
"""


class RedisTenantStore:
    """A `TenantStore` in one Redis hash; `close` closes only a client it made."""

    def __init__(self, client: Redis, *, prefix: str = "vgw", owns_client: bool = False) -> None:
        self._client = client
        self._hash = f"{prefix}:tenants"
        self._version = f"{prefix}:tenants:version"
        self._owns_client = owns_client
        self._write = client.register_script(_WRITE)

    async def all(self) -> list[TenantRecord]:
        with _mapped("read the tenants"):
            stored = await self._client.hgetall(self._hash)
        return sorted((record_from_json(body) for body in stored.values()), key=_name)

    async def get(self, name: str) -> TenantRecord | None:
        with _mapped("read a tenant"):
            body = await self._client.hget(self._hash, name)
        return None if body is None else record_from_json(body)

    async def create(self, record: TenantRecord) -> None:
        if not await self._call("create", record.name, record_to_json(record)):
            raise TenantExists(record.name)

    async def replace(self, record: TenantRecord) -> None:
        if not await self._call("replace", record.name, record_to_json(record)):
            raise TenantNotFound(record.name)

    async def delete(self, name: str) -> None:
        if not await self._call("delete", name, ""):
            raise TenantNotFound(name)

    async def version(self) -> int:
        with _mapped("read the tenants' version"):
            raw = await self._client.get(self._version)
        return 0 if raw is None else int(raw)

    async def close(self) -> None:
        if self._owns_client:
            with _mapped("close the connection"):
                await self._client.aclose()

    async def _call(self, mode: str, name: str, body: str) -> bool:
        with _mapped(f"{mode} a tenant"):
            done = await self._write(keys=[self._hash, self._version], args=[mode, name, body])
        return bool(done)


def _name(record: TenantRecord) -> str:
    return record.name


@contextmanager
def _mapped(action: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise TenantStoreUnavailable(f"could not {action} in Redis: {exc}") from exc


def connect(url: str, *, prefix: str = "vgw", timeout_s: float = 2.0) -> RedisTenantStore:
    """A store with its own client and bounded timeouts: a poll never hangs on an outage."""
    client = Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
    )
    return RedisTenantStore(client, prefix=prefix, owns_client=True)
