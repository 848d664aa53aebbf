"""One contract, three usage stores: memory (the fake), SQLite (a file), Redis (a real server)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from gateway.admin.audit import AuditEntry, SqliteAuditLog
from gateway.keys.format import generate, hash_secret
from gateway.keys.records import KeyRecord
from gateway.keys.sqlite import SqliteKeyStore
from gateway.settings import KeyStoreSettings
from gateway.usage.open import open_usage_store
from gateway.usage.records import UsageCounts, UsageKey
from gateway.usage.redis_store import RedisUsageStore, connect
from gateway.usage.sqlite import SqliteUsageStore
from gateway.usage.store import (
    MemoryUsageStore,
    UsageStore,
    UsageStoreError,
    UsageStoreUnavailable,
)
from tests.backends import BACKENDS, Backend, open_backend
from tests.servers import RedisServer

DAY = date(2025, 1, 30)


def counts(requests: int, prompt: int = 0, completion: int = 0) -> UsageCounts:
    return UsageCounts(requests, prompt, completion)


def key(principal: str, model: str, *, tenant: str = "acme", day: date = DAY) -> UsageKey:
    return UsageKey(principal, tenant, model, day)


UsageBackend = Backend[UsageStore]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> UsageBackend:
    return open_backend(
        request,
        tmp_path,
        memory=MemoryUsageStore,
        sqlite=SqliteUsageStore.open,
        redis=lambda url: connect(url, timeout_s=1.0),
    )


# The contract, on every store.


def test_add_sums_per_model_over_batches(backend: UsageBackend) -> None:
    async def scenario(store: UsageStore) -> None:
        assert await store.by_principal("k1") == {}
        await store.add({})  # nothing to do, and no error
        await store.add({key("k1", "llama"): counts(2, 100, 50), key("k1", "qwen"): counts(1, 7)})
        await store.add({key("k1", "llama"): counts(1, 10, 5)})
        assert await store.by_principal("k1") == {
            "llama": counts(3, 110, 55),
            "qwen": counts(1, 7, 0),
        }
        assert await store.by_tenant("acme") == await store.by_principal("k1")

    backend.run(scenario)


def test_day_ranges_include_both_ends(backend: UsageBackend) -> None:
    days = [DAY + timedelta(days=n) for n in range(5)]

    async def scenario(store: UsageStore) -> None:
        # Day n holds 10**n requests, so every sum names the days it covers.
        await store.add({key("k1", "m", day=day): counts(10**n, n) for n, day in enumerate(days)})
        assert await store.by_principal("k1") == {"m": counts(11111, 10)}
        assert await store.by_principal("k1", days[1], days[3]) == {"m": counts(1110, 6)}
        assert await store.by_principal("k1", since=days[3]) == {"m": counts(11000, 7)}
        assert await store.by_principal("k1", until=days[0]) == {"m": counts(1, 0)}
        assert await store.by_tenant("acme", days[2], days[2]) == {"m": counts(100, 2)}
        assert await store.by_tenant("acme", since=days[4] + timedelta(days=1)) == {}
        assert await store.by_principal("k1", days[3], days[1]) == {}  # an empty range

    backend.run(scenario)


def test_tenant_reads_sum_principals_and_principal_reads_do_not(
    backend: UsageBackend,
) -> None:
    async def scenario(store: UsageStore) -> None:
        await store.add(
            {
                key("k1", "m"): counts(1, 10, 1),
                key("k2", "m"): counts(2, 20, 2),
                key("k2", "other"): counts(4),
                key("k3", "m", tenant="globex"): counts(8, 80, 8),
                key("acme", "m", tenant="globex"): counts(16),  # a principal named like a tenant
            }
        )
        assert await store.by_tenant("acme") == {"m": counts(3, 30, 3), "other": counts(4)}
        assert await store.by_tenant("globex") == {"m": counts(24, 80, 8)}
        assert await store.by_principal("k2") == {"m": counts(2, 20, 2), "other": counts(4)}
        assert await store.by_principal("acme") == {"m": counts(16)}
        assert await store.by_principal("k3") == {"m": counts(8, 80, 8)}
        assert await store.by_tenant("k1") == {}
        assert await store.by_principal("nobody") == {}

    backend.run(scenario)


def test_names_with_separators_and_unicode_never_collide(backend: UsageBackend) -> None:
    models = ["a", "a|b", "b", "a|requests", "a:b", "|", ":", "", "2025-01-30|a", "ñandú-模型 🦙"]
    principals = ["p", "p:q", "p|q", "p:", "ключ"]

    async def scenario(store: UsageStore) -> None:
        batch = {
            key(principal, model, tenant=f"t:{principal}"): counts(i + 1, 1000 * (j + 1))
            for i, principal in enumerate(principals)
            for j, model in enumerate(models)
        }
        await store.add(batch)
        for i, principal in enumerate(principals):
            expected = {model: counts(i + 1, 1000 * (j + 1)) for j, model in enumerate(models)}
            assert await store.by_principal(principal) == expected
            assert await store.by_tenant(f"t:{principal}") == expected

    backend.run(scenario)


def test_many_rows_in_one_batch(backend: UsageBackend) -> None:
    principals = [f"key-{n}" for n in range(20)]
    models = [f"model-{n}" for n in range(10)]
    days = [DAY - timedelta(days=n) for n in range(15)]

    async def scenario(store: UsageStore) -> None:
        batch = {
            UsageKey(principal, f"tenant-{p % 2}", model, day): counts(p + 1, m, d)
            for p, principal in enumerate(principals)
            for m, model in enumerate(models)
            for d, day in enumerate(days)
        }
        assert len(batch) == 3000
        await store.add(batch)
        total_days = sum(range(len(days)))
        for p, principal in enumerate(principals):
            assert await store.by_principal(principal) == {
                model: counts((p + 1) * len(days), m * len(days), total_days)
                for m, model in enumerate(models)
            }
        even = sum(p + 1 for p in range(0, 20, 2)) * len(days)
        assert (await store.by_tenant("tenant-0", days[0], days[0]))["model-3"] == counts(
            even // len(days), 3 * 10, 0
        )
        assert (await store.by_tenant("tenant-0"))["model-9"] == counts(even, 9 * 150, 10 * 105)

    backend.run(scenario)


def test_the_store_keeps_no_reference_to_the_batch(backend: UsageBackend) -> None:
    async def scenario(store: UsageStore) -> None:
        row = counts(1, 2, 3)
        await store.add({key("k1", "m"): row})
        row.add(counts(100, 100, 100))  # the caller reuses its objects
        totals = await store.by_principal("k1")
        assert totals == {"m": counts(1, 2, 3)}
        totals["m"].add(counts(5))  # and so may a reader
        assert await store.by_principal("k1") == {"m": counts(1, 2, 3)}

    backend.run(scenario)


# SQLite: a table in the key store's file.


@asynccontextmanager
async def sqlite_at(path: Path, *, read_only: bool = False) -> AsyncIterator[SqliteUsageStore]:
    store = await SqliteUsageStore.open(path, read_only=read_only)
    try:
        yield store
    finally:
        await store.close()


async def _add(path: Path, batch: dict[UsageKey, UsageCounts]) -> None:
    async with sqlite_at(path) as store:
        await store.add(batch)


async def _by_principal(path: Path, principal: str) -> dict[str, UsageCounts]:
    async with sqlite_at(path) as store:
        return await store.by_principal(principal)


def test_sqlite_survives_closing_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"

    async def main() -> None:
        async with sqlite_at(path) as store:
            await store.add({key("k1", "m"): counts(1, 2, 3)})
        await store.close()  # idempotent
        with pytest.raises(UsageStoreUnavailable, match="closed"):
            await store.add({key("k1", "m"): counts(1)})
        with pytest.raises(UsageStoreUnavailable, match="closed"):
            await store.by_tenant("acme")
        async with sqlite_at(path) as reopened:
            await reopened.add({key("k1", "m"): counts(1, 1, 1)})
            assert await reopened.by_principal("k1") == {"m": counts(2, 3, 4)}

    asyncio.run(main())
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_sqlite_batch_is_all_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    asyncio.run(_add(path, {key("full", "m"): counts(1)}))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE token_usage SET requests = ?", (2**63 - 1,))
    batch = {key("k1", "m"): counts(1), key("full", "m"): counts(1), key("k2", "m"): counts(1)}
    with pytest.raises(UsageStoreError, match="add 3 usage rows"):
        asyncio.run(_add(path, batch))
    assert asyncio.run(_by_principal(path, "k1")) == {}
    assert asyncio.run(_by_principal(path, "k2")) == {}
    assert asyncio.run(_by_principal(path, "full")) == {"m": counts(2**63 - 1)}


def test_sqlite_read_only_file_refuses_writes_and_keeps_every_row(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    asyncio.run(_add(path, {key("k1", "m"): counts(1, 2, 3)}))

    async def main() -> None:
        async with sqlite_at(path, read_only=True) as store:
            with pytest.raises(UsageStoreUnavailable, match="read-only to the gateway"):
                await store.add({key("k1", "m"): counts(1), key("k2", "m"): counts(1)})
            assert await store.by_principal("k1") == {"m": counts(1, 2, 3)}
            assert await store.by_tenant("acme") == {"m": counts(1, 2, 3)}

    asyncio.run(main())
    assert asyncio.run(_by_principal(path, "k1")) == {"m": counts(1, 2, 3)}
    assert asyncio.run(_by_principal(path, "k2")) == {}


def test_sqlite_open_fails_clearly_where_no_file_can_be(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageStoreUnavailable, match="open the SQLite usage store"):
        asyncio.run(SqliteUsageStore.open(tmp_path / "file" / "keys.db"))


@pytest.mark.parametrize("usage_first", [True, False])
def test_sqlite_shares_its_file_with_the_keys_and_the_audit_log(
    tmp_path: Path, usage_first: bool
) -> None:
    path = tmp_path / "keys.db"
    api_key = generate()
    record = KeyRecord(
        id=api_key.id,
        tenant="acme",
        name="shared file",
        secret_hash=hash_secret(b"a-test-pepper-of-32-bytes-length", api_key.secret),
        created_at=datetime.now(UTC),
    )
    entry = AuditEntry(at=datetime.now(UTC), actor="token:0", action="create", key_id=record.id)

    async def write() -> None:
        if usage_first:
            await _add(path, {key(record.id, "m"): counts(1, 2, 3)})
        keys, audit = await SqliteKeyStore.open(path), await SqliteAuditLog.open(path)
        async with sqlite_at(path) as usage:
            await keys.create(record)
            await audit.append(entry)
            await usage.add({key(record.id, "m"): counts(1, 2, 3)})
        await keys.close()
        await audit.close()

    async def read() -> None:
        keys, audit = await SqliteKeyStore.open(path), await SqliteAuditLog.open(path)
        async with sqlite_at(path) as usage:
            assert await keys.get(record.id) == record
            assert [e.key_id for e in (await audit.list())[0]] == [record.id]
            expected = counts(2, 4, 6) if usage_first else counts(1, 2, 3)
            assert await usage.by_principal(record.id) == {"m": expected}
        await keys.close()
        await audit.close()

    asyncio.run(write())
    asyncio.run(read())
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (1,)  # the key store's


# Redis: a real server, shared by replicas, persisted with AOF.


@asynccontextmanager
async def redis_at(server: RedisServer, prefix: str = "vgw") -> AsyncIterator[RedisUsageStore]:
    store = connect(server.url, prefix=prefix, timeout_s=1.0)
    try:
        yield store
    finally:
        await store.close()


def test_redis_survives_a_restart_with_aof(redis_server: RedisServer) -> None:
    async def write() -> None:
        async with redis_at(redis_server) as store:
            await store.add({key("k1", "m"): counts(1, 2, 3), key("k2", "n"): counts(4)})

    async def read() -> None:
        async with redis_at(redis_server) as store:
            assert await store.by_principal("k1") == {"m": counts(1, 2, 3)}
            assert await store.by_tenant("acme") == {"m": counts(1, 2, 3), "n": counts(4)}

    asyncio.run(write())
    redis_server.stop()
    redis_server.start()
    asyncio.run(read())


def test_redis_down_is_unavailable_and_writes_nothing(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with redis_at(redis_server) as store:
            await store.add({key("k1", "m"): counts(1, 2, 3)})
            redis_server.stop()
            batch = {key("k1", "m"): counts(10), key("k2", "m"): counts(10)}
            with pytest.raises(UsageStoreUnavailable, match="add 2 usage rows in the Redis"):
                await store.add(batch)
            with pytest.raises(UsageStoreUnavailable, match="read usage"):
                await store.by_principal("k1")
            with pytest.raises(UsageStoreUnavailable, match="read usage"):
                await store.by_tenant("acme")
            redis_server.start()
            assert await store.by_principal("k1") == {"m": counts(1, 2, 3)}
            assert await store.by_principal("k2") == {}
            assert await store.by_tenant("acme") == {"m": counts(1, 2, 3)}
            await store.add(batch)  # the same batch, again, once Redis is back
            assert await store.by_tenant("acme") == {"m": counts(21, 2, 3)}

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_rows_give_back_every_row_with_its_tenant(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """What an export reads: every row, summed per key, whatever the principal holds."""
    batch = {
        key("k:1", "a|b"): counts(1, 2, 3),
        key("jwt-sub", "m", tenant="beta", day=DAY + timedelta(days=1)): counts(4, 5, 6),
    }

    async def main() -> None:
        if kind == "sqlite":
            store: SqliteUsageStore | RedisUsageStore = await SqliteUsageStore.open(
                tmp_path / "u.db"
            )
        else:
            store = connect(request.getfixturevalue("redis_server").url)
        try:
            assert await store.rows() == []
            await store.add(batch)
            await store.add({key("k:1", "a|b"): counts(1)})
            expected = {**batch, key("k:1", "a|b"): counts(2, 2, 3)}
            assert dict(await store.rows()) == expected
        finally:
            await store.close()

    asyncio.run(main())


def test_redis_key_layout_is_the_documented_one(redis_server: RedisServer) -> None:
    async def main() -> None:
        raw = Redis.from_url(redis_server.url, decode_responses=True)
        async with redis_at(redis_server) as store, redis_at(redis_server, "other") as other:
            await store.add({key("k:1", "a|b"): counts(1, 2, 3)})
            fields = {"2025-01-30|a|b|requests": "1", "2025-01-30|a|b|prompt_tokens": "2"}
            fields["2025-01-30|a|b|completion_tokens"] = "3"
            assert await raw.hgetall("vgw:usage:principal:k:1") == fields
            assert await raw.hgetall("vgw:usage:tenant:acme") == fields
            assert await raw.hgetall("vgw:usage:principal-tenant") == {"k:1": "acme"}
            assert sorted(await raw.keys("*")) == [
                "vgw:usage:principal-tenant",
                "vgw:usage:principal:k:1",
                "vgw:usage:tenant:acme",
            ]
            assert await other.by_principal("k:1") == {}  # another prefix, another gateway
        await raw.aclose()

    asyncio.run(main())


def test_redis_foreign_data_is_a_store_error(redis_server: RedisServer) -> None:
    async def main() -> None:
        raw = Redis.from_url(redis_server.url)
        async with redis_at(redis_server) as store:
            await raw.hset("vgw:usage:principal:odd", "not-a-usage-field", "1")
            with pytest.raises(UsageStoreError, match="usage field is invalid"):
                await store.by_principal("odd")
            await raw.hset("vgw:usage:tenant:odd", "2025-01-30|m|requests", "many")
            with pytest.raises(UsageStoreError, match="not an integer"):
                await store.by_tenant("odd")
            await raw.set("vgw:usage:principal:string", "x")
            with pytest.raises(UsageStoreError, match="WRONGTYPE") as refused:
                await store.add({key("string", "m"): counts(1)})
            assert not isinstance(refused.value, UsageStoreUnavailable)
        await raw.aclose()

    asyncio.run(main())


# Opening from the settings: beside the keys.


def test_open_usage_store_follows_the_key_store_settings(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async def main() -> None:
        path = tmp_path / "data" / "keys.db"
        sqlite_store = await open_usage_store(KeyStoreSettings(sqlite_path=path))
        await sqlite_store.add({key("k1", "m"): counts(1)})
        await sqlite_store.close()
        assert isinstance(sqlite_store, SqliteUsageStore)
        assert path.exists()
        url = SecretStr(redis_server.url)
        redis_store = await open_usage_store(KeyStoreSettings(backend="redis", redis_url=url))
        await redis_store.add({key("k1", "m"): counts(2)})
        assert isinstance(redis_store, RedisUsageStore)
        assert await redis_store.by_principal("k1") == {"m": counts(2)}
        await redis_store.close()

    asyncio.run(main())


def test_estimated_requests_are_kept_apart_and_summed(backend: UsageBackend) -> None:
    async def scenario(store: UsageStore) -> None:
        await store.add({key("k1", "llama"): UsageCounts(2, 10, 20, 1)})
        await store.add({key("k1", "llama"): UsageCounts(1, 5, 5, 0)})
        await store.add({key("k1", "qwen"): UsageCounts(1, 3, 100, 1)})
        got = await store.by_principal("k1")
        assert got["llama"] == UsageCounts(3, 15, 25, 1)
        assert got["qwen"] == UsageCounts(1, 3, 100, 1)
        assert (await store.by_tenant("acme"))["qwen"].estimated_requests == 1

    backend.run(scenario)


def test_a_usage_table_from_before_estimates_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE token_usage (principal TEXT NOT NULL, day TEXT NOT NULL, "
            "model TEXT NOT NULL, tenant TEXT NOT NULL, requests INTEGER NOT NULL, "
            "prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, "
            "PRIMARY KEY (principal, day, model, tenant)) STRICT, WITHOUT ROWID"
        )
        db.execute("INSERT INTO token_usage VALUES ('k1', ?, 'm', 'acme', 4, 40, 4)", [str(DAY)])
    db.close()

    async def main() -> None:
        store = await SqliteUsageStore.open(path)
        try:
            assert (await store.by_principal("k1"))["m"] == UsageCounts(4, 40, 4, 0)
            await store.add({key("k1", "m"): UsageCounts(1, 2, 3, 1)})
            assert (await store.by_principal("k1"))["m"] == UsageCounts(5, 42, 7, 1)
        finally:
            await store.close()

    asyncio.run(main())
