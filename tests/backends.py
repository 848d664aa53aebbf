"""One store contract, three backends: the part of the store suites that does not depend on
which store (keys or usage) is under test.

A suite's `backend` fixture is parametrised over BACKENDS and hands `open_backend` only how
to open its own store on each; a scenario then runs against a freshly opened store and the
store is closed whatever the scenario did. The redis backend is a real redis-server (the
`redis_server` fixture of tests/conftest.py), requested only for the redis parameter so the
other two start no process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import pytest

from tests.servers import RedisServer

BACKENDS = ["memory", "sqlite", "redis"]


class Closable(Protocol):
    async def close(self) -> None: ...


StoreT = TypeVar("StoreT", bound=Closable)


@dataclass
class Backend(Generic[StoreT]):
    name: str
    open: Callable[[], Awaitable[StoreT]]
    redis: RedisServer | None = None

    def run(self, scenario: Callable[[StoreT], Awaitable[None]]) -> None:
        async def main() -> None:
            store = await self.open()
            try:
                await scenario(store)
            finally:
                await store.close()

        asyncio.run(main())


def open_backend(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    *,
    memory: Callable[[], StoreT],
    sqlite: Callable[[Path], Awaitable[StoreT]],
    redis: Callable[[str], StoreT],
) -> Backend[StoreT]:
    """The backend named by REQUEST's parameter: MEMORY(), SQLITE(a file under TMP_PATH),
    or REDIS(the URL of a real redis-server started for this test)."""
    if request.param == "memory":

        async def open_memory() -> StoreT:
            return memory()

        return Backend("memory", open_memory)
    if request.param == "sqlite":
        return Backend("sqlite", lambda: sqlite(tmp_path / "keys.db"))
    server: RedisServer = request.getfixturevalue("redis_server")

    async def open_redis() -> StoreT:
        return redis(server.url)

    return Backend("redis", open_redis, server)
