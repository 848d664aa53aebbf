"""Stored responses: where each one lives, and who may name it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.proxy.response_store import ResponseStoreUnavailable, StoredResponse
from gateway.proxy.response_store_redis import RedisResponseStore
from tests.servers import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def stopped_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    server.stop()
    yield server


async def test_a_redis_store_made_for_asyncio_fails_promptly_and_quietly(
    stopped_redis: RedisServer,
) -> None:
    # Warnings are errors here: an asyncio client given a synchronous retry warns.
    store = RedisResponseStore.connect(stopped_redis.url, timeout_s=2.0)
    try:
        with pytest.raises(ResponseStoreUnavailable):
            await store.remember("resp_1", StoredResponse("m", "http://r", "acme", "k"))
        with pytest.raises(ResponseStoreUnavailable):
            await store.lookup("resp_1")
    finally:
        await store.close()
