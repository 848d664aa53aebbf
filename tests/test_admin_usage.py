"""The admin API's usage reads, per key and per tenant, over a real usage store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from gateway.admin.app import create_admin_app
from gateway.admin.audit import MemoryAuditLog
from gateway.admin.auth import AdminAuthorizer
from gateway.keys.records import KeyChanges
from gateway.keys.store import MemoryKeyStore
from gateway.usage.records import UsageCounts, UsageKey
from gateway.usage.sqlite import SqliteUsageStore
from gateway.usage.store import MemoryUsageStore, UsageStore

PEPPER = b"a-test-pepper-of-32-bytes-length"
TOKEN = "admin-token-for-the-usage-tests"
NOW = datetime(2030, 1, 5, 12, tzinfo=UTC)
DAY1, DAY2, DAY3 = date(2030, 1, 1), date(2030, 1, 2), date(2030, 1, 3)
ZERO = {
    "requests": 0,
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "total_tokens": 0,
    "estimated_requests": 0,
}
Json = Any


@dataclass
class Usage:
    """An admin API client, and the stores behind it."""

    client: httpx.AsyncClient
    keys: MemoryKeyStore
    audit: MemoryAuditLog

    async def get(self, path: str, *, expect: int = 200, token: str | None = TOKEN) -> Json:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await self.client.get(f"/admin/v1{path}", headers=headers)
        assert response.status_code == expect, response.text
        return response.json()

    async def create_key(self, tenant: str) -> str:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        response = await self.client.post(
            "/admin/v1/keys", json={"tenant": tenant}, headers=headers
        )
        assert response.status_code == 201, response.text
        key_id: str = response.json()["id"]
        return key_id


@asynccontextmanager
async def admin_api(usage: UsageStore) -> AsyncIterator[Usage]:
    keys, audit = MemoryKeyStore(), MemoryAuditLog()
    app = create_admin_app(keys, audit, PEPPER, AdminAuthorizer([TOKEN]), lambda: NOW, usage=usage)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        yield Usage(client, keys, audit)


def counts(requests: int, prompt: int = 0, completion: int = 0) -> UsageCounts:
    return UsageCounts(requests, prompt, completion)


def totals(requests: int, prompt: int, completion: int, estimated: int = 0) -> Json:
    return {
        "requests": requests,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "estimated_requests": estimated,
    }


async def fill(store: UsageStore, key_id: str, other_key: str) -> None:
    """acme: `key_id` on two models over three days, and a JWT subject; globex: `other_key`."""
    await store.add(
        {
            UsageKey(key_id, "acme", "llama", DAY1): counts(2, 100, 10),
            UsageKey(key_id, "acme", "llama", DAY2): counts(3, 300, 30),
            UsageKey(key_id, "acme", "qwen", DAY3): counts(1, 5, 0),
            UsageKey("alice@sso", "acme", "llama", DAY2): counts(4, 40, 4),
            UsageKey(other_key, "globex", "llama", DAY2): counts(9, 900, 90),
        }
    )
    # No usage reported: charged its reservation, marked estimated.
    await store.add({UsageKey(key_id, "acme", "llama", DAY2): UsageCounts(1, 8, 16, 1)})


def test_key_usage_per_model_and_in_total_over_days() -> None:
    async def main() -> None:
        store = MemoryUsageStore()
        async with admin_api(store) as admin:
            key_id, other = await admin.create_key("acme"), await admin.create_key("globex")
            await fill(store, key_id, other)
            await admin.keys.record_use(key_id, NOW)
            usage = await admin.get(f"/keys/{key_id}/usage")
            assert usage == {
                "key_id": key_id,
                "tenant": "acme",
                "last_used_at": "2030-01-05T12:00:00Z",
                "since": None,
                "until": None,
                "models": {"llama": totals(6, 408, 56, 1), "qwen": totals(1, 5, 0)},
                "total": totals(7, 413, 56, 1),
            }
            day2 = await admin.get(f"/keys/{key_id}/usage?since=2030-01-02&until=2030-01-02")
            assert (day2["since"], day2["until"]) == ("2030-01-02", "2030-01-02")
            assert day2["models"] == {"llama": totals(4, 308, 46, 1)}
            later = await admin.get(f"/keys/{key_id}/usage?since=2030-01-02")
            assert later["total"] == totals(5, 313, 46, 1)
            earlier = await admin.get(f"/keys/{key_id}/usage?until=2030-01-02")
            assert earlier["models"] == {"llama": totals(6, 408, 56, 1)}
            for query in ("since=2030-02-01", "since=2030-01-03&until=2030-01-01"):
                none = await admin.get(f"/keys/{key_id}/usage?{query}")
                assert (none["models"], none["total"]) == ({}, ZERO)  # nothing, or no days
            other_usage = await admin.get(f"/keys/{other}/usage")
            assert other_usage["total"] == totals(9, 900, 90)

    asyncio.run(main())


def test_tenant_usage_counts_every_key_and_jwt_subject_of_the_tenant() -> None:
    async def main() -> None:
        store = MemoryUsageStore()
        async with admin_api(store) as admin:
            key_id, other = await admin.create_key("acme"), await admin.create_key("globex")
            await fill(store, key_id, other)
            usage = await admin.get("/tenants/acme/usage")
            assert usage == {
                "tenant": "acme",
                "since": None,
                "until": None,
                "models": {"llama": totals(10, 448, 60, 1), "qwen": totals(1, 5, 0)},
                "total": totals(11, 453, 60, 1),
            }
            day2 = await admin.get("/tenants/acme/usage?since=2030-01-02&until=2030-01-02")
            assert day2["models"] == {"llama": totals(8, 348, 50, 1)}
            globex = await admin.get("/tenants/globex/usage?until=2030-01-01")
            assert (globex["models"], globex["total"]) == ({}, ZERO)
            # A tenant no key was ever made for: nothing counted, not an error.
            nobody = await admin.get("/tenants/nobody/usage")
            assert (nobody["tenant"], nobody["models"], nobody["total"]) == ("nobody", {}, ZERO)

    asyncio.run(main())


def test_a_tenant_name_with_a_slash_is_reachable() -> None:
    async def main() -> None:
        store = MemoryUsageStore()
        await store.add({UsageKey("alice", "org/team", "m", DAY1): counts(1, 2, 3)})
        async with admin_api(store) as admin:
            usage = await admin.get(f"/tenants/{quote('org/team', safe='')}/usage")
            assert (usage["tenant"], usage["total"]) == ("org/team", totals(1, 2, 3))

    asyncio.run(main())


def test_unknown_key_bad_dates_and_no_credentials_are_refused() -> None:
    async def main() -> None:
        async with admin_api(MemoryUsageStore()) as admin:
            key_id = await admin.create_key("acme")
            missing = await admin.get("/keys/aaaaaaaaaaaaaaaa/usage", expect=404)
            assert missing["error"]["code"] == "key_not_found"
            await admin.keys.update(key_id, KeyChanges(revoked_at=NOW))
            assert (await admin.get(f"/keys/{key_id}/usage"))["total"] == ZERO  # revoked: read
            for path in (f"/keys/{key_id}/usage", "/tenants/acme/usage"):
                for query, param in (
                    ("since=yesterday", "since"),
                    ("until=2030-02-30", "until"),
                ):
                    error = (await admin.get(f"{path}?{query}", expect=422))["error"]
                    assert (error["code"], error["param"]) == ("invalid_request", param)
                for token in (None, "not-the-admin-token"):
                    error = (await admin.get(path, expect=401, token=token))["error"]
                    assert error["code"] == "invalid_admin_credentials"
            assert [e.action for e in (await admin.audit.list())[0]] == ["key.create"]

    asyncio.run(main())


def test_a_usage_store_that_cannot_read_is_a_503(tmp_path: Path) -> None:
    async def main() -> None:
        store = await SqliteUsageStore.open(tmp_path / "usage.db")
        await store.close()
        async with admin_api(store) as admin:
            key_id = await admin.create_key("acme")
            for path in (f"/keys/{key_id}/usage", "/tenants/acme/usage"):
                error = (await admin.get(path, expect=503))["error"]
                assert error["code"] == "usage_store_unavailable"
                assert "closed" in error["message"]

    asyncio.run(main())


def test_without_a_usage_store_nothing_is_counted() -> None:
    async def main() -> None:
        keys, audit = MemoryKeyStore(), MemoryAuditLog()
        app = create_admin_app(keys, audit, PEPPER, AdminAuthorizer([TOKEN]))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
            admin = Usage(client, keys, audit)
            key_id = await admin.create_key("acme")
            assert (await admin.get(f"/keys/{key_id}/usage"))["total"] == ZERO
            assert (await admin.get("/tenants/acme/usage"))["models"] == {}

    asyncio.run(main())
