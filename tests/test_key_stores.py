"""One contract, three stores: memory (the fake), SQLite (a real file), Redis (a real server)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.keys.format import ApiKey, generate, hash_secret
from gateway.keys.records import (
    KeyChanges,
    KeyRecord,
    Rotation,
    decode_limits,
    encode_limits,
    format_time,
    new_secret,
)
from gateway.keys.redis_store import RedisKeyStore, _backoff_s
from gateway.keys.sqlite import SqliteKeyStore
from gateway.keys.store import (
    KeyExists,
    KeyNotFound,
    KeyStore,
    KeyStoreError,
    KeyStoreUnavailable,
    MemoryKeyStore,
)
from gateway.principal import Limits, Quotas, Rates
from tests.backends import BACKENDS, Backend, open_backend
from tests.servers import RedisServer

PEPPER = b"a-test-pepper-of-32-bytes-length"
NOW = datetime.now(UTC)

KeyBackend = Backend[KeyStore]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> KeyBackend:
    return open_backend(
        request,
        tmp_path,
        memory=MemoryKeyStore,
        sqlite=SqliteKeyStore.open,
        redis=lambda url: RedisKeyStore.connect(url, timeout_s=1.0),
    )


def make_record(tenant: str = "acme", key: ApiKey | None = None, **fields: object) -> KeyRecord:
    key = key or generate()
    record = KeyRecord(
        id=key.id,
        tenant=tenant,
        name=f"key of {tenant}",
        secret_hash=hash_secret(PEPPER, key.secret),
        created_at=NOW,
    )
    return replace(record, **fields)  # type: ignore[arg-type]


def full_record(key: ApiKey) -> KeyRecord:
    """A record with every field set, to show each one survives the store."""
    return make_record(
        key=key,
        models=frozenset({"llama-3-8b", "qwen-2.5"}),
        limits=Limits(
            requests_per_minute=60,
            tokens_per_minute=10_000,
            concurrent_requests=4,
            max_tokens=512,
            models={"llama-3-8b": Rates(requests_per_minute=10, concurrent_requests=1)},
            quotas=Quotas(tokens_per_day=10**15, requests_per_month=0, cost_per_day=2_500_000),
        ),
        expires_at=NOW + timedelta(days=30),
        last_used_at=NOW - timedelta(minutes=5),
        metadata={"owner": "ops@example.com", "team": "ñandú"},
        previous_secret_hash=hash_secret(PEPPER, generate().secret),
        previous_valid_until=NOW + timedelta(hours=1),
    )


# The contract, on every store.


def test_create_and_get_round_trip_every_field(backend: KeyBackend) -> None:
    async def scenario(store: KeyStore) -> None:
        record = full_record(generate())
        plain = make_record(tenant="other")
        await store.create(record)
        await store.create(plain)
        assert await store.get(record.id) == record
        assert await store.get(plain.id) == plain
        assert await store.get(generate().id) is None

    backend.run(scenario)


def test_per_model_limits_round_trip_and_update(backend: KeyBackend) -> None:
    per_model = {
        "llama-3-8b": Rates(requests_per_minute=10, tokens_per_minute=5_000),
        "qwen/2.5 ünïcode": Rates(concurrent_requests=2),
        "empty": Rates(),
    }

    async def scenario(store: KeyStore) -> None:
        record = make_record(limits=Limits(requests_per_minute=100, models=per_model))
        await store.create(record)
        assert await store.get(record.id) == record
        fewer = Limits(models={"qwen/2.5 ünïcode": Rates(tokens_per_minute=7)})
        updated = await store.update(record.id, KeyChanges(limits=fewer))
        assert updated.limits == fewer and updated.principal().limits.models == fewer.models
        assert await store.get(record.id) == updated
        page, _ = await store.list(tenant=record.tenant)
        assert [r.limits for r in page] == [fewer]

    backend.run(scenario)


def test_create_refuses_a_taken_id_and_keeps_the_record(backend: KeyBackend) -> None:
    async def scenario(store: KeyStore) -> None:
        record = make_record()
        await store.create(record)
        with pytest.raises(KeyExists):
            await store.create(replace(record, name="impostor", tenant="evil"))
        assert await store.get(record.id) == record
        assert await store.list(tenant="evil") == ([], None)

    backend.run(scenario)


def test_list_pages_by_cursor_and_filters_by_tenant(backend: KeyBackend) -> None:
    async def scenario(store: KeyStore) -> None:
        records = [make_record("acme") for _ in range(7)] + [
            make_record("globex") for _ in range(3)
        ]
        for record in records:
            await store.create(record)
        seen: list[KeyRecord] = []
        cursor: str | None = None
        while True:
            page, cursor = await store.list(limit=3, cursor=cursor)
            assert len(page) <= 3
            seen += page
            if cursor is None:
                break
        assert seen == sorted(records, key=lambda r: r.id)
        acme, more = await store.list(tenant="acme", limit=7)
        assert more is None
        assert acme == sorted(records[:7], key=lambda r: r.id)
        first, cursor = await store.list(tenant="globex", limit=2)
        rest, end = await store.list(tenant="globex", limit=2, cursor=cursor)
        assert first + rest == sorted(records[7:], key=lambda r: r.id)
        assert end is None
        assert await store.list(tenant="nobody") == ([], None)
        with pytest.raises(ValueError, match="page"):
            await store.list(limit=0)

    backend.run(scenario)


def test_a_page_holds_100_keys_unless_asked_otherwise(backend: KeyBackend) -> None:
    async def scenario(store: KeyStore) -> None:
        records = sorted((make_record() for _ in range(101)), key=lambda r: r.id)
        for record in records:
            await store.create(record)
        page, cursor = await store.list()
        assert page == records[:100]
        assert cursor == records[99].id
        assert await store.list(cursor=cursor) == (records[100:], None)

    backend.run(scenario)


def test_update_changes_only_what_it_names(backend: KeyBackend) -> None:
    async def scenario(store: KeyStore) -> None:
        record = full_record(generate())
        await store.create(record)
        changes = KeyChanges(
            name="renamed",
            models=None,
            limits=Limits(requests_per_minute=5),
            expires_at=None,
            metadata={"owner": "someone@else"},
        )
        updated = await store.update(record.id, changes)
        assert updated == replace(
            record, name="renamed", models=None, limits=Limits(requests_per_minute=5),
            expires_at=None, metadata={"owner": "someone@else"},
        )  # fmt: skip
        assert await store.get(record.id) == updated
        assert await store.update(record.id, KeyChanges()) == updated
        with pytest.raises(KeyNotFound):
            await store.update(generate().id, changes)

    backend.run(scenario)


def test_revoke(backend: KeyBackend) -> None:
    async def scenario(store: KeyStore) -> None:
        key = generate()
        record = make_record(key=key)
        await store.create(record)
        revoked = await store.update(record.id, KeyChanges(revoked_at=NOW))
        assert revoked.revoked_at == NOW
        stored = await store.get(record.id)
        assert stored == revoked
        assert stored is not None and not stored.is_usable(NOW)
        assert record.is_usable(NOW)

    backend.run(scenario)


def test_rotation_with_grace_keeps_the_old_secret_until_then(backend: KeyBackend) -> None:
    async def scenario(store: KeyStore) -> None:
        old = generate()
        await store.create(make_record(key=old))
        grace = NOW + timedelta(minutes=10)
        new, rotation = new_secret(PEPPER, old.id, grace_until=grace)
        rotated = await store.update(old.id, KeyChanges(rotation=rotation))
        assert rotated.secret_hash == hash_secret(PEPPER, new.secret)
        assert rotated.previous_secret_hash == hash_secret(PEPPER, old.secret)
        assert rotated.previous_valid_until == grace
        stored = await store.get(old.id)
        assert stored == rotated
        assert stored.secret_matches(PEPPER, new.secret, NOW)
        assert stored.secret_matches(PEPPER, old.secret, NOW)
        assert not stored.secret_matches(PEPPER, old.secret, grace)
        # Rotating again without grace: only the newest secret opens the key.
        newest = generate(old.id)
        final = await store.update(
            old.id, KeyChanges(rotation=Rotation(hash_secret(PEPPER, newest.secret)))
        )
        assert final.previous_secret_hash is None and final.previous_valid_until is None
        assert await store.get(old.id) == final
        assert not final.secret_matches(PEPPER, new.secret, NOW)
        assert final.secret_matches(PEPPER, newest.secret, NOW)

    backend.run(scenario)


def test_record_use_only_moves_forward(backend: KeyBackend) -> None:
    async def scenario(store: KeyStore) -> None:
        record = make_record()
        await store.create(record)
        later, earlier = NOW + timedelta(seconds=30), NOW + timedelta(seconds=10)
        await store.record_use(record.id, later)
        await store.record_use(record.id, earlier)
        assert await store.get(record.id) == replace(record, last_used_at=later)
        await store.record_use(generate().id, NOW)  # unknown: ignored, nothing created
        assert len((await store.list())[0]) == 1
        # An update keeps last_used_at.
        updated = await store.update(record.id, KeyChanges(name="x"))
        assert updated.last_used_at == later

    backend.run(scenario)


def test_changes_name_each_created_and_updated_key(backend: KeyBackend) -> None:
    async def scenario(store: KeyStore) -> None:
        record = make_record()
        async with store.changes() as feed:
            await store.create(record)
            await store.update(record.id, KeyChanges(revoked_at=NOW))
            assert await asyncio.wait_for(anext(feed), 1.0) == record.id
            assert await asyncio.wait_for(anext(feed), 1.0) == record.id

    backend.run(scenario)


def test_plaintext_secret_is_never_stored(backend: KeyBackend, tmp_path: Path) -> None:
    key = generate()

    async def scenario(store: KeyStore) -> None:
        await store.create(make_record(key=key))
        rotated = generate(key.id)
        grace = Rotation(hash_secret(PEPPER, rotated.secret), grace_until=NOW)
        await store.update(key.id, KeyChanges(rotation=grace))
        assert key.secret not in repr(await store.get(key.id))

    backend.run(scenario)
    if backend.redis is not None:
        backend.redis.stop()  # flushes the AOF
        files = backend.redis.files()
    else:
        files = [path for path in tmp_path.rglob("*") if path.is_file()]
    stored = b"".join(path.read_bytes() for path in files)
    if backend.name != "memory":
        assert key.id.encode() in stored  # the right files were searched
        assert hash_secret(PEPPER, key.secret).encode() in stored
    assert key.secret.encode() not in stored


# SQLite: a file on one node.


@asynccontextmanager
async def sqlite_at(path: Path, *, read_only: bool = False) -> AsyncIterator[SqliteKeyStore]:
    store = await SqliteKeyStore.open(path, read_only=read_only)
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def redis_at(server: RedisServer) -> AsyncIterator[RedisKeyStore]:
    store = RedisKeyStore.connect(server.url, timeout_s=1.0)
    try:
        yield store
    finally:
        await store.close()


async def _create(path: Path, record: KeyRecord) -> None:
    async with sqlite_at(path) as store:
        await store.create(record)


async def _list(path: Path) -> list[KeyRecord]:
    async with sqlite_at(path) as store:
        page, _ = await store.list()
        return page


def test_sqlite_survives_closing_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"

    async def main() -> None:
        record = full_record(generate())
        async with sqlite_at(path) as store:
            await store.create(record)
            updated = await store.update(record.id, KeyChanges(revoked_at=NOW))
        await store.close()  # idempotent
        with pytest.raises(KeyStoreUnavailable, match="closed"):
            await store.get(record.id)
        async with sqlite_at(path) as reopened:
            assert await reopened.get(record.id) == updated

    asyncio.run(main())
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA user_version").fetchone() == (1,)


def test_sqlite_refuses_a_schema_from_a_newer_gateway(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    asyncio.run(_create(path, make_record()))
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(KeyStoreError, match="schema version 99"):
        asyncio.run(SqliteKeyStore.open(path))


def test_sqlite_refuses_a_schema_version_no_gateway_writes(tmp_path: Path) -> None:
    # A negative user_version (another tool's file) is not a fresh store to build on.
    path = tmp_path / "keys.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = -1")
    with pytest.raises(KeyStoreError, match="schema version -1, which no gateway writes"):
        asyncio.run(SqliteKeyStore.open(path))
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == []


def test_gateways_opening_one_new_sqlite_file_together_all_start(tmp_path: Path) -> None:
    # Each open switches the file to WAL (the losers of that race are told "locked" at
    # once, and must try again: about 2 % of opens, so 600 of them), reads the version,
    # then migrates under BEGIN IMMEDIATE and reads it again: the ones that lost the race
    # find the schema made and build nothing twice.
    async def main() -> None:
        for attempt in range(150):
            path = tmp_path / f"keys-{attempt}.db"
            stores = await asyncio.gather(*(SqliteKeyStore.open(path) for _ in range(4)))
            record = make_record()
            await stores[0].create(record)
            for store in stores:
                assert await store.get(record.id) == record
                await store.close()

    asyncio.run(main())
    with sqlite3.connect(tmp_path / "keys-0.db") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (1,)


def test_sqlite_open_fails_clearly_where_no_file_can_be(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(KeyStoreUnavailable, match="open the SQLite key store"):
        asyncio.run(SqliteKeyStore.open(tmp_path / "file" / "keys.db"))


def test_sqlite_read_only_file_refuses_writes_and_keeps_every_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    record = full_record(generate())
    asyncio.run(_create(path, record))

    async def main() -> None:
        async with sqlite_at(path, read_only=True) as store:
            with pytest.raises(KeyStoreUnavailable, match="read-only to the gateway"):
                await store.create(make_record())
            with pytest.raises(KeyStoreUnavailable, match=f"update key {record.id}"):
                await store.update(record.id, KeyChanges(name="lost", revoked_at=NOW))
            with pytest.raises(KeyStoreUnavailable):
                await store.record_use(record.id, NOW + timedelta(days=1))
            assert await store.get(record.id) == record

    asyncio.run(main())
    assert asyncio.run(_list(path)) == [record]


# Redis: a real server, shared by replicas, persisted with AOF.


def test_redis_survives_a_restart_with_aof(redis_server: RedisServer) -> None:
    record = full_record(generate())

    async def write() -> KeyRecord:
        async with redis_at(redis_server) as store:
            await store.create(record)
            await store.record_use(record.id, NOW + timedelta(seconds=1))
            return await store.update(record.id, KeyChanges(revoked_at=NOW))

    async def read() -> None:
        async with redis_at(redis_server) as store:
            assert await store.get(record.id) == updated
            assert await store.list(tenant=record.tenant) == ([updated], None)

    updated = asyncio.run(write())
    redis_server.stop()
    redis_server.start()
    asyncio.run(read())


def test_redis_change_reaches_another_replica_within_a_second(redis_server: RedisServer) -> None:
    async def main() -> None:
        record = make_record()
        async with redis_at(redis_server) as listener, redis_at(redis_server) as writer:
            async with listener.changes() as feed:
                await writer.create(record)
                assert await asyncio.wait_for(anext(feed), 1.0) == record.id
                await asyncio.sleep(1.5)  # an idle subscription outlives the socket timeout
                await writer.update(record.id, KeyChanges(revoked_at=NOW))
                assert await asyncio.wait_for(anext(feed), 1.0) == record.id
            seen = await listener.get(record.id)
            assert seen is not None and seen.revoked_at == NOW

    asyncio.run(main())


def test_the_redis_layout_is_the_documented_one(redis_server: RedisServer) -> None:
    # Replicas of different versions share these keys during a rolling upgrade: the
    # names, types and scores are a contract (gateway/keys/redis_store.py's docstring).
    record = full_record(generate())

    async def main() -> None:
        raw = Redis.from_url(redis_server.url, socket_timeout=5, decode_responses=True)
        await raw.flushall()
        async with redis_at(redis_server) as store:
            await store.create(record)
        key = f"vgw:key:{record.id}"
        assert sorted(await raw.keys("*")) == sorted(
            [key, "vgw:keys", f"vgw:tenant:{record.tenant}", "vgw:layout"]
        )
        fields = await raw.hgetall(key)
        assert set(fields) == {"record", "last_used_at"}
        assert json.loads(fields["record"])["last_used_at"] is None  # kept in its field
        assert fields["last_used_at"] == format_time(record.last_used_at)
        assert await raw.zrange("vgw:keys", 0, -1, withscores=True) == [(record.id, 0.0)]
        tenant = await raw.zrange(f"vgw:tenant:{record.tenant}", 0, -1, withscores=True)
        assert tenant == [(record.id, 0.0)]
        await raw.aclose()

    asyncio.run(main())


def test_a_redis_key_store_on_the_callers_client_leaves_it_open(redis_server: RedisServer) -> None:
    # The gateway shares one client between parts; closing the store must not close
    # it under the others. A store that made its own client (`connect`) closes it.
    async def main() -> None:
        observer = Redis.from_url(redis_server.url, socket_timeout=5)
        others = len(await observer.client_list())

        async def connections(expected: int) -> int:
            """Ours on the server once they settle at EXPECTED (a close reaches the
            server a moment later), or what there are after 5 s."""
            for _ in range(100):
                count = len(await observer.client_list()) - others
                if count == expected:
                    break
                await asyncio.sleep(0.05)
            return count

        client = Redis.from_url(redis_server.url, socket_timeout=5)
        store = RedisKeyStore(client)
        await store.create(make_record())
        await store.close()
        await asyncio.sleep(0.2)  # a close, had there been one, has reached the server
        assert await connections(1) == 1
        await client.aclose()
        assert await connections(0) == 0
        owned = RedisKeyStore.connect(redis_server.url, timeout_s=1.0)
        await owned.get("absent")
        assert await connections(1) == 1
        await owned.close()
        assert await connections(0) == 0
        await observer.aclose()

    asyncio.run(main())


def test_a_redis_key_read_is_one_round_trip(redis_server: RedisServer) -> None:
    # The layout is checked once per store; after that a read is one HGETALL.
    record = make_record()

    async def main() -> None:
        raw = Redis.from_url(redis_server.url, socket_timeout=5, decode_responses=True)
        async with redis_at(redis_server) as store:
            await store.create(record)
            await raw.config_resetstat()
            for _ in range(20):
                assert await store.get(record.id) == record
            stats = await raw.info("commandstats")
        await raw.aclose()
        calls = {name: stat["calls"] for name, stat in stats.items()}
        calls.pop("cmdstat_config|resetstat", None)
        assert calls == {"cmdstat_hgetall": 20}

    asyncio.run(main())


def _keepalive_timer_s(port: int) -> float | None:
    """The kernel's keepalive timer of our local TCP socket on PORT (/proc/net/tcp:
    timer kind 2 is keepalive, its time in clock ticks), None if none is armed."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}":
            kind, ticks = fields[5].split(":")
            return int(ticks, 16) / os.sysconf("SC_CLK_TCK") if kind == "02" else None
    raise AssertionError(f"no socket on port {port}")


def test_the_redis_key_stores_connections_probe_a_silent_peer(redis_server: RedisServer) -> None:
    # A Redis that vanished without a FIN (a node lost) is noticed by the kernel: the
    # store's sockets send keepalive probes after 5 s of silence, not two hours.
    async def main() -> None:
        raw = Redis.from_url(redis_server.url, socket_timeout=5, decode_responses=True)
        before = {client["addr"] for client in await raw.client_list()}
        async with redis_at(redis_server) as store:
            await store.get("absent")
            [addr] = {client["addr"] for client in await raw.client_list()} - before
            timer = _keepalive_timer_s(int(addr.rsplit(":", 1)[1]))
        await raw.aclose()
        assert timer is not None and 0 <= timer <= 5.0, timer

    asyncio.run(main())


def test_an_idle_redis_feed_stays_open_and_still_delivers(redis_server: RedisServer) -> None:
    # Silence from other replicas is not silence from Redis: the PINGs' answers keep an
    # idle feed alive for many intervals, and the next notice still arrives.
    async def main() -> None:
        store = RedisKeyStore.connect(redis_server.url, timeout_s=1.0, ping_interval_s=0.1)
        try:
            async with store.changes() as feed:
                waiting = asyncio.ensure_future(anext(feed))
                done, _ = await asyncio.wait({waiting}, timeout=1.0)  # ten intervals
                assert not done, waiting.exception() if done else None
                await store.create(record := make_record())
                assert await asyncio.wait_for(waiting, 2.0) == record.id
        finally:
            await store.close()

    asyncio.run(main())


def test_a_busy_redis_feed_pings_once_per_interval_not_once_per_notice(
    redis_server: RedisServer,
) -> None:
    # The PING is the feed's liveness probe when Redis is silent; a feed carrying a
    # burst of notices must not add a round trip to Redis for each of them.
    async def main() -> None:
        raw = Redis.from_url(redis_server.url, socket_timeout=5)
        async with redis_at(redis_server) as store, store.changes() as feed:
            await raw.config_resetstat()
            for number in range(300):
                await raw.publish(store.channel, f"key-{number}")
            heard = [await asyncio.wait_for(anext(feed), 5.0) for _ in range(300)]
            stats = await raw.info("commandstats")
        await raw.aclose()
        assert heard == [f"key-{number}" for number in range(300)]
        pings = stats.get("cmdstat_ping", {}).get("calls", 0)
        assert pings <= 5, f"{pings} PINGs for a burst of 300 notices"

    asyncio.run(main())


def test_redis_down_is_a_clear_error_and_loses_nothing(redis_server: RedisServer) -> None:
    record = full_record(generate())

    async def main() -> None:
        async with redis_at(redis_server) as store:
            await store.create(record)
            redis_server.stop()
            attempts: list[Callable[[], Awaitable[object]]] = [
                lambda: store.get(record.id),
                store.list,
                lambda: store.create(make_record()),
                lambda: store.update(record.id, KeyChanges(name="lost")),
                lambda: store.record_use(record.id, NOW),
            ]
            for attempt in attempts:
                with pytest.raises(KeyStoreUnavailable, match="Redis key store"):
                    await attempt()
            with pytest.raises(KeyStoreUnavailable, match="subscribe"):
                async with store.changes():
                    pass
            redis_server.start()
            assert await store.get(record.id) == record
            assert await store.list() == ([record], None)

    asyncio.run(main())


def test_redis_feed_fails_when_the_server_goes_away(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with redis_at(redis_server) as store, store.changes() as feed:
            redis_server.stop()
            with pytest.raises(KeyStoreUnavailable, match="receive key changes"):
                await asyncio.wait_for(anext(feed), 5.0)

    asyncio.run(main())


def test_redis_concurrent_updates_from_replicas_all_apply(redis_server: RedisServer) -> None:
    async def main() -> None:
        record = make_record()
        async with redis_at(redis_server) as one, redis_at(redis_server) as two:
            await one.create(record)
            names = [f"name-{i}" for i in range(20)]
            updates = [
                (one if i % 2 else two).update(record.id, KeyChanges(name=name))
                for i, name in enumerate(names)
            ]
            results = await asyncio.gather(*updates)
            assert [r.name for r in results] == names
            final = await one.get(record.id)
            assert final is not None and final.name in names
            assert replace(final, name=record.name) == record

    asyncio.run(main())


def test_redis_mixed_concurrent_updates_lose_no_field_and_no_revocation(
    redis_server: RedisServer,
) -> None:
    """Three replicas write different fields of the same keys at once: one renames, one
    changes limits, one revokes. An update built on a stale read would put back an old
    value of a field another replica wrote, or un-revoke a key."""
    rounds = 12

    async def renamer(store: RedisKeyStore, key_id: str) -> None:
        for i in range(rounds):
            await store.update(key_id, KeyChanges(name=f"name-{i}"))

    async def limiter(store: RedisKeyStore, key_id: str) -> None:
        for i in range(rounds):
            await store.update(key_id, KeyChanges(limits=Limits(requests_per_minute=i + 1)))

    async def revoker(store: RedisKeyStore, key_id: str, revoked: set[str]) -> None:
        for i in range(rounds):
            if i == rounds // 2:
                await store.update(key_id, KeyChanges(revoked_at=NOW))
                revoked.add(key_id)
            else:
                await store.update(key_id, KeyChanges(metadata={"round": str(i)}))

    async def watch_revocations(
        store: RedisKeyStore, ids: list[str], revoked: set[str], done: asyncio.Event
    ) -> int:
        # Ended by `done`, not by a cancel: on Python 3.11 redis-py's `wait_for` can
        # swallow a cancel, and a loop of reads cancelled once would read on for ever.
        passes = 0
        while not done.is_set():
            passes += 1
            for key_id in ids:
                seen = key_id in revoked
                record = await store.get(key_id)
                assert record is not None
                assert record.revoked_at is not None or not seen, f"{key_id} was un-revoked"
            await asyncio.sleep(0)
        return passes

    async def main() -> None:
        records = [make_record(tenant=f"t{i}") for i in range(3)]
        ids = [record.id for record in records]
        revoked: set[str] = set()
        done = asyncio.Event()
        async with (
            redis_at(redis_server) as one,
            redis_at(redis_server) as two,
            redis_at(redis_server) as three,
            redis_at(redis_server) as reader,
        ):
            for record in records:
                await one.create(record)
            watcher = asyncio.create_task(watch_revocations(reader, ids, revoked, done))
            writers = [renamer(one, i) for i in ids] + [limiter(two, i) for i in ids]
            writers += [revoker(three, i, revoked) for i in ids]
            try:
                await asyncio.gather(*writers)
            finally:
                done.set()
            assert await watcher > 1, "the revocations were not watched while written"
            for record in records:
                final = await reader.get(record.id)
                assert final is not None
                assert (final.name, final.limits.requests_per_minute, final.revoked_at) == (
                    f"name-{rounds - 1}",
                    rounds,
                    NOW,
                ), "a concurrent update put back a stale field"
                assert final == replace(
                    record,
                    name=f"name-{rounds - 1}",
                    limits=Limits(requests_per_minute=rounds),
                    metadata={"round": str(rounds - 1)},
                    revoked_at=NOW,
                )

    asyncio.run(main())


def test_writers_that_lose_a_race_wait_a_jittered_doubling_time_up_to_100_ms() -> None:
    draw = random.Random(7).uniform
    bounds = [0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.1, 0.1, 0.1, 0.1]
    for attempt, bound in enumerate(bounds):
        waits = [_backoff_s(attempt, draw) for _ in range(400)]
        assert all(0 <= wait <= bound for wait in waits), attempt
        assert max(waits) > 0.9 * bound and min(waits) < 0.1 * bound, attempt


def test_a_corrupt_record_is_a_store_error_not_a_crash(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    record = make_record()
    path = tmp_path / "keys.db"
    asyncio.run(_create(path, record))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE api_keys SET limits = 'nonsense'")

    async def main() -> None:
        async with sqlite_at(path) as store:
            with pytest.raises(KeyStoreError, match="invalid"):
                await store.get(record.id)
        raw = Redis.from_url(redis_server.url)
        async with redis_at(redis_server) as store:
            await store.create(record)
            await raw.hset(f"vgw:key:{record.id}", "record", "{}")
            with pytest.raises(KeyStoreError, match="invalid"):
                await store.get(record.id)
        await raw.aclose()

    asyncio.run(main())


def test_limits_written_before_per_model_limits_still_read() -> None:
    assert decode_limits('{"requests_per_minute": 5, "max_tokens": null}') == Limits(
        requests_per_minute=5
    )
    limits = Limits(max_tokens=9, models={"m": Rates(requests_per_minute=1)})
    assert decode_limits(encode_limits(limits)) == limits
    quotas = Limits(quotas=Quotas(prompt_tokens_per_month=7, cost_per_month=1))
    assert '"cost_micro_usd_per_month": 1' in encode_limits(quotas)
    assert decode_limits(encode_limits(quotas)) == quotas


@pytest.mark.parametrize(
    "text",
    [
        '{"models": []}',
        '{"models": {"m": 5}}',
        '{"models": {"m": {"requests_per_minute": "5"}}}',
        '{"models": {"m": {"tokens_per_minute": true}}}',
        '{"models": {"m": {"concurrent_requests": 1.5}}}',
        '{"quotas": []}',
        '{"quotas": {"tokens_per_day": "5"}}',
        '{"quotas": {"tokens_per_day": -1}}',
        '{"quotas": {"cost_per_day": 5}}',
        '{"quotas": {"tokens_per_week": 5}}',
    ],
)
def test_malformed_per_model_limits_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        decode_limits(text)
