"""The admin API over real stores: memory (the fake), a SQLite file and a Redis server."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.admin.app import create_admin_app
from gateway.admin.audit import AuditEntry, AuditLog, MemoryAuditLog, SqliteAuditLog
from gateway.admin.audit_redis import RedisAuditLog
from gateway.admin.auth import AdminAuthorizer, JWTAdminCheck
from gateway.keys.format import parse
from gateway.keys.redis_store import RedisKeyStore
from gateway.keys.sqlite import SqliteKeyStore
from gateway.keys.store import KeyStore, MemoryKeyStore
from tests.servers import RedisServer

PEPPER = b"a-test-pepper-of-32-bytes-length"
TOKEN = "admin-token-number-two-of-two"
OTHER_TOKEN = "admin-token-number-one-of-two"
NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
MAX = "9999-12-31T23:59:59.999999-01:00"
Json = Any


@dataclass
class Clock:
    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Admin:
    """An admin API client that keeps every response body it saw."""

    client: httpx.AsyncClient
    store: KeyStore
    audit: AuditLog
    clock: Clock
    bodies: list[str] = field(default_factory=list)

    async def call(
        self, method: str, path: str, *, json: Json = None, expect: int = 200, token: str = TOKEN
    ) -> Json:
        headers = {"Authorization": f"Bearer {token}"}
        response = await self.client.request(method, f"/admin/v1{path}", json=json, headers=headers)
        self.bodies.append(response.text)
        assert response.status_code == expect, response.text
        return response.json()

    async def create(self, tenant: str = "acme", **fields: Json) -> Json:
        return await self.call("POST", "/keys", json={"tenant": tenant, **fields}, expect=201)


@asynccontextmanager
async def admin_api(
    store: KeyStore, audit: AuditLog, *, jwt_check: JWTAdminCheck | None = None
) -> AsyncIterator[Admin]:
    clock = Clock()
    authorizer = AdminAuthorizer([OTHER_TOKEN, TOKEN], jwt_check=jwt_check)
    app = create_admin_app(store, audit, PEPPER, authorizer, clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        yield Admin(client, store, audit, clock)


Scenario = Callable[[Admin], Awaitable[None]]


def run_on(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, scenario: Scenario
) -> None:
    async def main() -> None:
        store, audit = await open_backend(backend, tmp_path, request)
        try:
            async with admin_api(store, audit) as admin:
                await scenario(admin)
        finally:
            await store.close()
            await audit.close()

    asyncio.run(main())


async def open_backend(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[KeyStore, AuditLog]:
    if backend == "memory":
        return MemoryKeyStore(), MemoryAuditLog()
    if backend == "sqlite":
        path = tmp_path / "gateway.db"  # one file, two tables
        return await SqliteKeyStore.open(path), await SqliteAuditLog.open(path)
    server: RedisServer = request.getfixturevalue("redis_server")
    return RedisKeyStore.connect(server.url), RedisAuditLog.connect(server.url)


BACKENDS = pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])


@BACKENDS
def test_key_lifecycle(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens: list[str] = []

    async def scenario(admin: Admin) -> None:
        per_model = {"m1": {"requests_per_minute": 6, "tokens_per_minute": None}}
        limits = {"requests_per_minute": 60, "models": per_model}
        created = await admin.create(
            name="ci", models=["m1"], limits=limits, metadata={"team": "ml"}
        )
        key_id = created["id"]
        tokens.append(created["key"])
        assert parse(created["key"]).id == key_id
        got = await admin.call("GET", f"/keys/{key_id}")
        assert got == {name: value for name, value in created.items() if name != "key"}
        assert got["status"] == "active" and got["limits"]["requests_per_minute"] == 60
        assert got["limits"]["models"] == {"m1": {**per_model["m1"], "concurrent_requests": None}}
        record = await admin.store.get(key_id)
        assert record is not None and record.limits.models["m1"].requests_per_minute == 6
        assert not any(
            "hash" in name or "secret" in name.replace("previous_secret", "") for name in got
        )

        expiry = (NOW + timedelta(days=1)).isoformat()
        updated = await admin.call(
            "PATCH", f"/keys/{key_id}", json={"name": "ci-2", "models": None, "expires_at": expiry}
        )
        assert (updated["name"], updated["models"], updated["metadata"]) == (
            "ci-2",
            None,
            {"team": "ml"},
        )
        assert datetime.fromisoformat(updated["expires_at"]) == NOW + timedelta(days=1)
        assert updated["limits"]["requests_per_minute"] == 60

        await check_rotation(admin, key_id, tokens)

        revoked = await admin.call("POST", f"/keys/{key_id}/revoke")
        assert revoked["status"] == "revoked"
        assert datetime.fromisoformat(revoked["revoked_at"]) == admin.clock.now
        admin.clock.advance(10)
        assert await admin.call("POST", f"/keys/{key_id}/revoke") == revoked  # idempotent
        assert (await admin.call("GET", f"/keys/{key_id}"))["status"] == "revoked"
        conflict = await admin.call("POST", f"/keys/{key_id}/rotate", expect=409)
        assert conflict["error"]["code"] == "conflict"
        usage = await admin.call("GET", f"/keys/{key_id}/usage")
        assert (usage["key_id"], usage["tenant"], usage["models"]) == (key_id, "acme", {})
        assert usage["total"]["requests"] == 0 and usage["last_used_at"] is None
        await check_audit(admin, key_id)

    run_on(backend, tmp_path, request, scenario)
    assert len(tokens) == 3 and "key.create" in caplog.text
    for token in tokens:
        assert parse(token).secret not in caplog.text


async def check_rotation(admin: Admin, key_id: str, tokens: list[str]) -> None:
    """Rotate with a grace period, let it pass, rotate without one; check what opens the key."""
    rotated = await admin.call("POST", f"/keys/{key_id}/rotate", json={"grace_seconds": 300})
    tokens.append(rotated["key"])
    grace_until = datetime.fromisoformat(rotated["previous_secret_valid_until"])
    assert grace_until == admin.clock.now + timedelta(seconds=300)
    assert await opens(admin, key_id) == [True, True]
    got = await admin.call("GET", f"/keys/{key_id}")
    assert got["previous_secret_valid_until"] == rotated["previous_secret_valid_until"]

    admin.clock.advance(301)
    assert await opens(admin, key_id) == [False, True]
    assert (await admin.call("GET", f"/keys/{key_id}"))["previous_secret_valid_until"] is None

    rotated = await admin.call("POST", f"/keys/{key_id}/rotate")  # no body: no grace
    tokens.append(rotated["key"])
    assert rotated["previous_secret_valid_until"] is None
    assert await opens(admin, key_id) == [False, False, True]
    for token in tokens:  # each plaintext was in exactly one response
        assert sum(parse(token).secret in body for body in admin.bodies) == 1


async def opens(admin: Admin, key_id: str) -> list[bool]:
    record = await admin.store.get(key_id)
    assert record is not None
    bodies = [json.loads(body) for body in admin.bodies]
    keys = [body["key"] for body in bodies if isinstance(body, dict) and "key" in body]
    return [record.secret_matches(PEPPER, parse(key).secret, admin.clock.now) for key in keys]


async def check_audit(admin: Admin, key_id: str) -> None:
    page = await admin.call("GET", "/audit")
    actions = [entry["action"] for entry in page["data"]]
    assert actions == ["key.revoke", "key.rotate", "key.rotate", "key.update", "key.create"]
    for entry in page["data"]:
        assert (entry["actor"], entry["key_id"], entry["tenant"]) == ("token:1", key_id, "acme")
        assert NOW <= datetime.fromisoformat(entry["at"]) <= admin.clock.now
    assert page["data"][3]["detail"] == {"fields": "expires_at,models,name"}
    assert page["data"][2]["detail"] == {"grace_seconds": "300"}
    first = await admin.call("GET", "/audit?limit=2")
    second = await admin.call("GET", f"/audit?limit=2&cursor={first['next_cursor']}")
    third = await admin.call("GET", f"/audit?limit=2&cursor={second['next_cursor']}")
    assert first["data"] + second["data"] + third["data"] == page["data"]
    assert third["next_cursor"] is None
    stored = repr((await admin.audit.list(limit=100))[0])
    for body in admin.bodies:
        loaded = json.loads(body)
        if isinstance(loaded, dict) and "key" in loaded:
            assert parse(loaded["key"]).secret not in stored and "vgw_" not in stored


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_paging_and_tenant_filter(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    async def scenario(admin: Admin) -> None:
        acme = sorted([(await admin.create("acme"))["id"] for _ in range(5)])
        beta = sorted([(await admin.create("beta"))["id"] for _ in range(3)])
        seen: list[str] = []
        cursor = ""
        while True:
            page = await admin.call("GET", f"/keys?tenant=acme&limit=2{cursor}")
            assert len(page["data"]) <= 2
            seen += [key["id"] for key in page["data"]]
            if page["next_cursor"] is None:
                break
            cursor = f"&cursor={page['next_cursor']}"
        assert seen == acme
        everything = await admin.call("GET", "/keys")
        assert [key["id"] for key in everything["data"]] == sorted(acme + beta)
        assert everything["next_cursor"] is None
        assert (await admin.call("GET", "/keys?tenant=gamma"))["data"] == []
        for query in ("limit=0", "limit=1001", "cursor=not-a-key-id", "tenant="):
            error = await admin.call("GET", f"/keys?{query}", expect=422)
            assert error["error"]["type"] == "invalid_request_error"

    run_on(backend, tmp_path, request, scenario)


BAD_HEADERS: list[list[tuple[str, bytes]]] = [
    [],
    [("Authorization", TOKEN.encode())],  # no scheme
    [("Authorization", f"Basic {TOKEN}".encode())],
    [("Authorization", b"Bearer")],
    [("Authorization", b"Bearer ")],
    [("Authorization", b"")],
    [("Authorization", b"Bearer wrong-token")],
    [("Authorization", f"Bearer {TOKEN}x".encode())],
    [("Authorization", f"Bearer {TOKEN[:-1]}".encode())],
    [("Authorization", b"Bearer " + b"a" * 10_000)],
    [("Authorization", "Bearer tökén-ünïcode".encode())],
    [("Authorization", f"Bearer {TOKEN}".encode()), ("Authorization", b"Bearer other")],
    [("X-Admin-Token", TOKEN.encode())],
]


def test_every_route_refuses_missing_wrong_and_malformed_credentials() -> None:
    async def main() -> None:
        store, audit = MemoryKeyStore(), MemoryAuditLog()
        async with admin_api(store, audit) as admin:
            key_id = (await admin.create())["id"]
            schema = (await admin.client.get("/admin/openapi.json")).json()
            operations = [
                (
                    method.upper(),
                    path.replace("{key_id}", key_id)
                    .replace("{tenant}", "acme")
                    .replace("{name}", "acme"),
                )
                for path, methods in schema["paths"].items()
                for method in methods
            ]
            assert len(operations) == 19 and all(p.startswith("/admin/v1/") for _, p in operations)
            operations += [("GET", "/admin/v1/no-such-route"), ("DELETE", "/admin/v1/keys")]
            for method, path in operations:
                for headers in BAD_HEADERS:
                    response = await admin.client.request(
                        method, path, headers=headers, content=b"{not json"
                    )
                    assert response.status_code == 401, (method, path, headers, response.text)
                    assert response.headers["www-authenticate"].startswith("Bearer")
                    assert response.json()["error"]["code"] == "invalid_admin_credentials"
            assert len((await audit.list())[0]) == 1  # the create, nothing since
            assert (await admin.client.get("/admin/docs")).status_code == 200
            # The scheme is case-insensitive, and either configured token works.
            for value in (f"bearer {TOKEN}", f"Bearer {OTHER_TOKEN}"):
                response = await admin.client.get(
                    "/admin/v1/keys", headers={"Authorization": value}
                )
                assert response.status_code == 200

    asyncio.run(main())


def test_jwt_with_admin_claim_is_an_admin() -> None:
    checked: list[str] = []

    async def jwt_check(token: str) -> str | None:
        checked.append(token)
        return "alice" if token == "head.claims.signature" else None

    async def main() -> None:
        async with admin_api(MemoryKeyStore(), MemoryAuditLog(), jwt_check=jwt_check) as admin:
            created = await admin.call(
                "POST", "/keys", json={"tenant": "t"}, token="head.claims.signature", expect=201
            )
            key_id = created["id"]
            await admin.call("GET", "/keys", token="head.other.signature", expect=401)
            entries, _ = await admin.audit.list()
            assert [(e.actor, e.key_id) for e in entries] == [("jwt:alice", key_id)]

    asyncio.run(main())
    assert checked == ["head.claims.signature", "head.other.signature"]  # tokens never reach it


def test_read_only_sqlite_is_503_and_keeps_the_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"

    async def main() -> None:
        writable = await SqliteKeyStore.open(path)
        audit = MemoryAuditLog()
        async with admin_api(writable, audit) as admin:
            created = await admin.create(name="keep-me")
            before = await admin.call("GET", f"/keys/{created['id']}")
        await writable.close()
        store = await SqliteKeyStore.open(path, read_only=True)
        try:
            async with admin_api(store, audit) as admin:
                await check_refused_writes(admin, created["id"], before)
        finally:
            await store.close()

    asyncio.run(main())


async def check_refused_writes(admin: Admin, key_id: str, before: Json) -> None:
    record = await admin.store.get(key_id)
    writes: list[tuple[str, str, Json]] = [
        ("POST", "/keys", {"tenant": "acme"}),
        ("PATCH", f"/keys/{key_id}", {"name": "changed"}),
        ("POST", f"/keys/{key_id}/rotate", {"grace_seconds": 60}),
        ("POST", f"/keys/{key_id}/revoke", None),
    ]
    for method, path, body in writes:
        error = (await admin.call(method, path, json=body, expect=503))["error"]
        assert error["code"] == "key_store_unavailable"
        assert "read-only" in error["message"], error
        assert "vgw_" not in json.dumps(error)
    assert await admin.call("GET", f"/keys/{key_id}") == before
    assert await admin.store.get(key_id) == record
    assert [entry.action for entry in (await admin.audit.list())[0]] == ["key.create"]


def test_redis_down_is_503(redis_server: RedisServer) -> None:
    async def main() -> None:
        store = RedisKeyStore.connect(redis_server.url, timeout_s=0.5)
        try:
            async with admin_api(store, MemoryAuditLog()) as admin:
                key_id = (await admin.create())["id"]
                redis_server.stop()
                error = await admin.call("PATCH", f"/keys/{key_id}", json={"name": "x"}, expect=503)
                assert error["error"]["code"] == "key_store_unavailable"
                assert "Redis" in error["error"]["message"]
                await admin.call("GET", f"/keys/{key_id}", expect=503)
        finally:
            await store.close()

    asyncio.run(main())


def test_audit_log_down_is_503_saying_what_was_done(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"

    async def main() -> None:
        await (await SqliteAuditLog.open(path)).close()  # create the table
        audit = await SqliteAuditLog.open(path, read_only=True)
        try:
            async with admin_api(MemoryKeyStore(), audit) as admin:
                error = (await admin.call("POST", "/keys", json={"tenant": "t"}, expect=503))[
                    "error"
                ]
                assert error["code"] == "audit_log_unavailable"
                assert (
                    "key.create of key" in error["message"]
                    and "could not be audited" in error["message"]
                )
                assert "read-only" in error["message"] and "vgw_" not in error["message"]
                assert (await admin.call("GET", "/audit"))["data"] == []
        finally:
            await audit.close()

    asyncio.run(main())


def test_invalid_requests_are_422_and_never_echo_input() -> None:
    async def main() -> None:
        async with admin_api(MemoryKeyStore(), MemoryAuditLog()) as admin:
            created = await admin.create()
            key_id, secret = created["id"], parse(created["key"]).secret
            invalid: list[tuple[str, str, Json]] = [
                ("POST", "/keys", {"tenant": "t", "expires_at": "2030-01-01T00:00:00"}),
                ("POST", "/keys", {"tenant": "t", "secret_hash": "x"}),
                ("POST", "/keys", {"tenant": ""}),
                ("POST", "/keys", {"tenant": "t\x00"}),
                ("POST", "/keys", {"tenant": "t", "limits": {"max_tokens": 0}}),
                ("PATCH", f"/keys/{key_id}", {}),
                ("PATCH", f"/keys/{key_id}", {"name": None}),
                ("POST", f"/keys/{key_id}/rotate", {"grace_seconds": -1}),
                ("GET", f"/keys/{created['key']}", None),
                ("GET", f"/audit?cursor={secret}", None),
            ]
            bad_model_limits: list[Json] = [
                {"m": {"max_tokens": 1}},  # key-wide only
                {"m": {"tokens_per_minute": 0}},
                {"m\x00": {}},
                {str(n): {} for n in range(1001)},
            ]
            for models in bad_model_limits:
                invalid.append(("POST", "/keys", {"tenant": "t", "limits": {"models": models}}))
            for method, path, body in invalid:
                error = (await admin.call(method, path, json=body, expect=422))["error"]
                assert error["code"] == "invalid_request" and secret not in error["message"]
            for moment, status in (("0001-01-01T00:30:00+01:00", "expired"), (MAX, "active")):
                edge = await admin.create(expires_at=moment)  # past UTC's range: clamped
                assert edge["status"] == status
            missing = await admin.call("GET", "/keys/aaaaaaaaaaaaaaaa", expect=404)
            assert missing["error"]["code"] == "key_not_found"

    asyncio.run(main())


@BACKENDS
def test_audit_log_contract(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    async def main() -> None:
        _, audit = await open_backend(backend, tmp_path, request)
        try:
            assert await audit.list() == ([], None)
            for index in range(5):
                at = NOW + timedelta(seconds=index)
                stored = await audit.append(
                    AuditEntry(
                        at, "token:0", f"a{index}", "aaaaaaaaaaaaaaaa", "t", {"n": str(index)}
                    )
                )
                assert stored.id and stored.at == at
            pages: list[list[AuditEntry]] = []
            cursor = None
            while True:
                page, cursor = await audit.list(limit=2, cursor=cursor)
                pages.append(page)
                if cursor is None:
                    break
            assert [len(page) for page in pages] == [2, 2, 1]
            entries = [entry for page in pages for entry in page]
            assert [e.action for e in entries] == ["a4", "a3", "a2", "a1", "a0"]
            assert entries[-1].detail == {"n": "0"} and entries[-1].at == NOW
            for bad in ("x", "-1", "1-2-3"):
                with pytest.raises(ValueError):
                    await audit.list(cursor=bad)
        finally:
            await audit.close()

    asyncio.run(main())
