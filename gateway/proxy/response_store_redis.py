"""The store of created responses in Redis, shared by every gateway replica.

    {prefix}:response:{id}   string: the record (JSON), with the store's TTL

The entry is ephemeral (a TTL, no migration): the key layout version
(`gateway/redis_layout.py`) does not cover it. Imported only when the keys
are in Redis.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.proxy.response_store import DEFAULT_TTL_S, StoredResponse, unavailable

logger = logging.getLogger("gateway.proxy")


class RedisResponseStore:
    """The store every gateway replica shares, beside the keys in Redis."""

    def __init__(self, client: Redis, *, ttl_s: float = DEFAULT_TTL_S, prefix: str = "vgw") -> None:
        self._client = client
        self._ttl_ms = int(ttl_s * 1000)
        self._prefix = prefix

    @classmethod
    def connect(
        cls, url: str, *, ttl_s: float = DEFAULT_TTL_S, timeout_s: float = 2.0
    ) -> RedisResponseStore:
        """Bounded timeouts and no retries: an outage is a prompt 503, not a hang."""
        client = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(client, ttl_s=ttl_s)

    async def remember(self, response_id: str, stored: StoredResponse) -> None:
        try:
            await self._client.set(
                self._key(response_id), orjson.dumps(asdict(stored)), px=self._ttl_ms
            )
        except RedisError as exc:
            raise unavailable() from exc

    async def lookup(self, response_id: str) -> StoredResponse | None:
        try:
            raw = await self._client.get(self._key(response_id))
        except RedisError as exc:
            raise unavailable() from exc
        return None if raw is None else _record(raw)

    async def close(self) -> None:
        await self._client.aclose()

    def _key(self, response_id: str) -> str:
        return f"{self._prefix}:response:{response_id}"


def _record(raw: bytes | str) -> StoredResponse | None:
    """A stored record; None for one this gateway cannot read (another version wrote it)."""
    try:
        value = orjson.loads(raw)
        return StoredResponse(
            str(value["model"]),
            str(value["replica"]),
            str(value["tenant"]),
            str(value["principal"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError):
        logger.warning("an unreadable stored response record was ignored")
        return None
