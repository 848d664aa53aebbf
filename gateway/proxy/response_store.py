"""Where each created Response lives: its model, its replica and its owner, for a while.

vLLM keeps a stored Response in the memory of the replica that made it
(`VLLM_ENABLE_RESPONSES_API_STORE`), so a GET, a cancel or a follow-up turn
(`previous_response_id`) must reach that replica, and only its owner may
name it. The gateway remembers, per id, the model, the replica URL, the
tenant and the principal; each entry expires after `responses.store_ttl`
seconds.

Two stores: in this process's memory (one gateway), or in Redis when the keys
are (every gateway replica then routes every id):

    {prefix}:response:{id}   string: the record (JSON), with the store's TTL

The entry is ephemeral (a TTL, no migration): the key layout version
(`gateway/redis_layout.py`) does not cover it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

import orjson
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from gateway.errors import GatewayError

logger = logging.getLogger("gateway.proxy")

DEFAULT_TTL_S = 86_400
DEFAULT_MAX_ENTRIES = 100_000


class ResponseStoreUnavailable(GatewayError):
    status = 503
    code = "response_store_unavailable"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """Where one response lives and whose it is."""

    model: str
    replica: str
    tenant: str
    principal: str


class ResponseStore(Protocol):
    async def remember(self, response_id: str, stored: StoredResponse) -> None:
        """Keep STORED under RESPONSE_ID for the store's TTL; ResponseStoreUnavailable
        when the store cannot be written."""

    async def lookup(self, response_id: str) -> StoredResponse | None:
        """The record of RESPONSE_ID, None when unknown or expired;
        ResponseStoreUnavailable when the store cannot be read."""

    async def close(self) -> None: ...


class MemoryResponseStore:
    """One gateway's store: the newest MAX_ENTRIES records, each for TTL seconds."""

    def __init__(
        self,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, StoredResponse]] = OrderedDict()

    async def remember(self, response_id: str, stored: StoredResponse) -> None:
        entries = self._entries
        entries[response_id] = (self._clock() + self._ttl, stored)
        entries.move_to_end(response_id)
        while len(entries) > self._max:
            entries.popitem(last=False)

    async def lookup(self, response_id: str) -> StoredResponse | None:
        found = self._entries.get(response_id)
        if found is None:
            return None
        if found[0] <= self._clock():
            del self._entries[response_id]
            return None
        return found[1]

    async def close(self) -> None:
        self._entries.clear()


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
            raise _unavailable() from exc

    async def lookup(self, response_id: str) -> StoredResponse | None:
        try:
            raw = await self._client.get(self._key(response_id))
        except RedisError as exc:
            raise _unavailable() from exc
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


def _unavailable() -> ResponseStoreUnavailable:
    return ResponseStoreUnavailable(
        "The gateway cannot reach its store of responses right now; try again shortly.",
        headers={"retry-after": "1"},
    )
