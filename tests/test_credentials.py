"""Authorization header -> Principal: API keys through a per-process cache, and refusals."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.auth.credentials import (
    Authenticator,
    InvalidApiKey,
    MissingCredentials,
    bearer_token,
)
from gateway.auth.jwt import AuthError
from gateway.auth.key_cache import CredentialStoreUnavailable, KeyCache
from gateway.keys.records import KeyChanges, new_key, new_secret
from gateway.keys.redis_store import RedisKeyStore
from gateway.keys.sqlite import SqliteKeyStore
from gateway.keys.store import KeyStore, MemoryKeyStore
from gateway.principal import Limits, Principal
from tests.servers import RedisServer

PEPPER = b"credentials-test-pepper-32-bytes"
NOW = datetime.now(UTC)


def bearer(token: str) -> bytes:
    return f"Bearer {token}".encode()


@pytest.mark.parametrize(
    "header",
    [
        None,
        b"",
        b"Bearer",
        b"Bearer   ",
        b"Basic dXNlcjpwYXNz",
        b"vgw_abc",
        b"Bearer " + b"x" * 10_000,
        "Bearer clé".encode(),
        b"\xff\xfe",
    ],
)
def test_malformed_authorization_headers_are_missing_credentials(header: bytes | None) -> None:
    with pytest.raises(MissingCredentials) as caught:
        bearer_token(header)
    assert caught.value.status == 401


def test_bearer_scheme_is_case_insensitive() -> None:
    assert bearer_token(b"bearer  tok-1 ") == "tok-1"


class StaticJWT:
    """A second verifier seam: takes one fixed token (the JWT module has its own tests)."""

    async def verify(self, token: str) -> Principal:
        if token != "a.jwt.token":
            raise AuthError("bad token")
        return Principal(id="user-1", tenant="acme", kind="jwt")


async def check_key_lifecycle(store: KeyStore) -> None:
    cache = KeyCache(store)
    cache.start()
    auth = Authenticator(cache, PEPPER, StaticJWT())
    key, record = new_key(
        PEPPER,
        tenant="acme",
        name="ci",
        created_at=NOW,
        models=frozenset({"m1"}),
        limits=Limits(requests_per_minute=5),
    )
    await store.create(record)
    principal = await auth.authenticate(bearer(key.token))
    assert principal == Principal(
        id=record.id,
        tenant="acme",
        kind="key",
        models=frozenset({"m1"}),
        limits=Limits(requests_per_minute=5),
    )
    assert (await auth.authenticate(bearer("a.jwt.token"))).kind == "jwt"
    with pytest.raises(InvalidApiKey):
        await auth.authenticate(bearer(key.token[:-1] + ("a" if key.token[-1] != "a" else "b")))
    # Rotation with a grace period: both secrets work, once the cache heard of it.
    new, rotation = new_secret(PEPPER, record.id, grace_until=NOW + timedelta(hours=1))
    await store.update(record.id, KeyChanges(rotation=rotation))
    await wait_until_accepted(auth, new.token)
    await auth.authenticate(bearer(key.token))
    await store.update(record.id, KeyChanges(revoked_at=NOW))
    await wait_until_refused(auth, new.token, "revoked")
    await cache.stop()
    await store.close()


async def wait_until_accepted(auth: Authenticator, token: str, within_s: float = 1.0) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            await auth.authenticate(bearer(token))
            return
        except InvalidApiKey:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


async def wait_until_refused(
    auth: Authenticator, token: str, reason: str, within_s: float = 1.0
) -> float:
    started = time.monotonic()
    while True:
        try:
            await auth.authenticate(bearer(token))
        except InvalidApiKey as exc:
            assert exc.reason == reason
            return time.monotonic() - started
        assert time.monotonic() - started <= within_s, "the change did not reach the cache"
        await asyncio.sleep(0.02)


def test_key_lifecycle_memory() -> None:
    asyncio.run(check_key_lifecycle(MemoryKeyStore()))


def test_key_lifecycle_sqlite(tmp_path: Path) -> None:
    async def main() -> None:
        await check_key_lifecycle(await SqliteKeyStore.open(tmp_path / "keys.db"))

    asyncio.run(main())


def test_key_lifecycle_redis(redis_server: RedisServer) -> None:
    async def main() -> None:
        await check_key_lifecycle(RedisKeyStore.connect(redis_server.url))

    asyncio.run(main())


def test_revocation_reaches_another_replica_within_a_second(redis_server: RedisServer) -> None:
    """Two replicas, each with its own store client and cache, on one real redis-server."""

    async def main() -> float:
        admin, replica = (RedisKeyStore.connect(redis_server.url) for _ in range(2))
        cache = KeyCache(replica)
        cache.start()
        auth = Authenticator(cache, PEPPER, None)
        key, record = new_key(PEPPER, tenant="acme", name="shared", created_at=NOW)
        await admin.create(record)
        await wait_until_accepted(auth, key.token)  # now cached on the replica
        await admin.update(record.id, KeyChanges(revoked_at=datetime.now(UTC)))
        elapsed = await wait_until_refused(auth, key.token, "revoked")
        await cache.stop()
        await admin.close()
        await replica.close()
        return elapsed

    assert asyncio.run(main()) <= 1.0


def test_expired_and_unknown_keys_are_refused() -> None:
    async def main() -> None:
        store = MemoryKeyStore()
        auth = Authenticator(KeyCache(store), PEPPER, None)
        key, record = new_key(
            PEPPER, tenant="t", name="old", created_at=NOW, expires_at=NOW - timedelta(seconds=1)
        )
        await store.create(record)
        with pytest.raises(InvalidApiKey) as expired:
            await auth.authenticate(bearer(key.token))
        assert expired.value.reason == "expired"
        unknown, _ = new_key(PEPPER, tenant="t", name="never stored", created_at=NOW)
        with pytest.raises(InvalidApiKey):
            await auth.authenticate(bearer(unknown.token))
        with pytest.raises(InvalidApiKey) as malformed:
            await auth.authenticate(bearer("vgw_short"))
        assert malformed.value.reason == "malformed"
        with pytest.raises(InvalidApiKey):
            await auth.authenticate(bearer("not-a-key-and-no-jwt-configured"))

    asyncio.run(main())


def test_store_down_is_503_not_401(redis_server: RedisServer) -> None:
    async def main() -> None:
        store = RedisKeyStore.connect(redis_server.url)
        auth = Authenticator(KeyCache(store), PEPPER, None)
        key, record = new_key(PEPPER, tenant="t", name="k", created_at=NOW)
        await store.create(record)
        redis_server.stop()
        with pytest.raises(CredentialStoreUnavailable) as caught:
            await auth.authenticate(bearer(key.token))
        assert caught.value.status == 503
        await store.close()

    asyncio.run(main())


def test_use_is_recorded_once_a_minute_at_most(tmp_path: Path) -> None:
    async def main() -> None:
        store = await SqliteKeyStore.open(tmp_path / "keys.db")
        cache = KeyCache(store)
        auth = Authenticator(cache, PEPPER, None)
        key, record = new_key(PEPPER, tenant="t", name="k", created_at=NOW)
        await store.create(record)
        first = await auth.authenticate(bearer(key.token))
        await cache.stop()  # waits for the background write
        stored = await store.get(first.id)
        assert stored is not None and stored.last_used_at is not None
        used_at = stored.last_used_at
        await auth.authenticate(bearer(key.token))  # within the minute: no new write
        await cache.stop()
        again = await store.get(first.id)
        assert again is not None and again.last_used_at == used_at
        await store.close()

    asyncio.run(main())
