"""Where each created Response lives: its model, its replica and its owner, for a while.

vLLM keeps a stored Response in the memory of the replica that made it
(`VLLM_ENABLE_RESPONSES_API_STORE`), so a GET, a cancel or a follow-up turn
(`previous_response_id`) must reach that replica, and only its owner may
name it. The gateway remembers, per id, the model, the replica URL, the
tenant and the principal; each entry expires after `responses.store_ttl`
seconds.

Two stores: in this process's memory (one gateway, here), or in Redis when
the keys are (every gateway replica then routes every id:
`response_store_redis`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.errors import GatewayError

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


def unavailable() -> ResponseStoreUnavailable:
    return ResponseStoreUnavailable(
        "The gateway cannot reach its store of responses right now; try again shortly.",
        headers={"retry-after": "1"},
    )
