"""Tenants on one gateway with its SQLite store: applied at once, the CLI, export and import,
and the tenant store's contract on SQLite and on a real redis-server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.principal import Limits, Quotas, Rates
from gateway.tenants.records import TenantRecord
from gateway.tenants.redis_store import connect
from gateway.tenants.sqlite_store import SqliteTenantStore
from gateway.tenants.store import TenantExists, TenantNotFound, TenantStore
from tests.servers import Process, RedisServer, free_port, run_gateway
from tests.store_transfer import ADMIN, ADMIN_HEADERS, keys_cli, sqlite_config


@pytest.fixture(scope="module")
def gateway(module_tmp: Path, sim: Process) -> Iterator[Process]:
    config = sqlite_config(free_port(), sim, module_tmp / "keys.db")
    with run_gateway(module_tmp, config) as process:
        yield process


def tenants_cli(gateway: Process, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"VLLM_GATEWAY_URL": gateway.url, "VLLM_GATEWAY_ADMIN_TOKEN": ADMIN, "PATH": ""}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "tenants", *args],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


def chat(gateway: Process, key: str, model: str = "sim-model") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_the_cli_manages_tenants_and_changes_apply_at_once(gateway: Process) -> None:
    created = tenants_cli(
        gateway, "create", "cli-team", "--rpm", "100", "--models", "sim-model",
        "--quota", "tokens_per_day=5000", "--metadata", "owner=ops", "--json",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    doc = json.loads(created.stdout)
    assert doc["limits"]["requests_per_minute"] == 100 and doc["models"] == ["sim-model"]
    assert doc["quotas"]["tokens_per_day"] == 5000 and doc["metadata"] == {"owner": "ops"}
    assert ADMIN not in created.stdout + created.stderr

    answer = httpx.post(
        f"{gateway.url}/admin/v1/keys", json={"tenant": "cli-team"}, headers=ADMIN_HEADERS
    )
    key = answer.json()["key"]
    assert chat(gateway, key).status_code == 200
    # An allowlist without the model: the next request already sees it (one process).
    updated = tenants_cli(gateway, "update", "cli-team", "--models", "other", "--rpm", "none")
    assert updated.returncode == 0, updated.stderr
    assert "Updated tenant cli-team." in updated.stdout
    refused = chat(gateway, key)
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"

    listed = tenants_cli(gateway, "list")
    assert listed.returncode == 0 and listed.stdout.startswith("NAME")
    row = next(line for line in listed.stdout.splitlines() if line.startswith("cli-team"))
    assert "store" in row and "acme" in listed.stdout  # acme: from the settings
    shown = tenants_cli(gateway, "show", "cli-team")
    assert 'requests_per_minute": null' in shown.stdout and '"other"' in shown.stdout

    busy = tenants_cli(gateway, "delete", "cli-team")
    assert busy.returncode == 1 and "409" in busy.stderr
    httpx.post(f"{gateway.url}/admin/v1/keys/{answer.json()['id']}/revoke", headers=ADMIN_HEADERS)
    assert tenants_cli(gateway, "delete", "cli-team").returncode == 0
    assert tenants_cli(gateway, "show", "cli-team").returncode == 1
    assert tenants_cli(gateway, "update", "nobody").returncode == 2  # nothing to change
    assert tenants_cli(gateway, "create", "x", "--rpm", "ten").returncode == 2


def test_export_and_import_carry_the_tenants(
    gateway: Process, sim: Process, tmp_path: Path, module_tmp: Path
) -> None:
    body = {"name": "exported", "limits": {"max_batch": 8}, "quotas": {"cost_per_month": 2.5}}
    assert httpx.post(f"{gateway.url}/admin/v1/tenants", json=body, headers=ADMIN_HEADERS)
    dump = tmp_path / "dump.jsonl"
    source = sqlite_config(free_port(), sim, module_tmp / "keys.db")
    exported = keys_cli(tmp_path, "export", dump, source)
    assert exported.returncode == 0, exported.stderr
    lines = dump.read_text().splitlines()
    assert json.loads(lines[0])["version"] == 2
    assert json.loads(lines[-1])["tenants"] >= 1
    target = sqlite_config(free_port(), sim, tmp_path / "target.db")
    imported = keys_cli(tmp_path, "import", dump, target)
    assert imported.returncode == 0, imported.stderr

    async def read() -> TenantRecord | None:
        store = await SqliteTenantStore.open(tmp_path / "target.db")
        try:
            return await store.get("exported")
        finally:
            await store.close()

    record = asyncio.run(read())
    assert record is not None and record.limits.max_batch == 8
    assert record.quotas.cost_per_month == 2_500_000
    # A file of format 1 (no tenants) is still read.
    old = [lines[0].replace('"version": 2', '"version": 1')]
    old += [line for line in lines[1:-1] if '"kind": "tenant"' not in line]
    end = json.loads(lines[-1])
    del end["tenants"]
    (tmp_path / "old.jsonl").write_text("\n".join([*old, json.dumps(end)]) + "\n")
    older = keys_cli(tmp_path, "import", tmp_path / "old.jsonl", sqlite_config(
        free_port(), sim, tmp_path / "old.db"))  # fmt: skip
    assert older.returncode == 0, older.stderr


RECORD = TenantRecord(
    name="t-1",
    limits=Limits(
        requests_per_minute=5,
        max_tokens=64,
        models={"m": Rates(tokens_per_minute=9)},
        quotas=Quotas(requests_per_day=3, cost_per_day=1_500_000),
    ),
    models=frozenset({"m"}),
    metadata={"k": "v"},
)


async def contract(store: TenantStore) -> None:
    start = await store.version()
    await store.create(RECORD)
    with pytest.raises(TenantExists):
        await store.create(RECORD)
    assert await store.get("t-1") == RECORD and await store.all() == [RECORD]
    changed = TenantRecord(name="t-1", models=None)
    await store.replace(changed)
    assert await store.get("t-1") == changed
    with pytest.raises(TenantNotFound):
        await store.replace(TenantRecord(name="absent"))
    await store.delete("t-1")
    with pytest.raises(TenantNotFound):
        await store.delete("t-1")
    assert await store.get("t-1") is None and await store.all() == []
    assert await store.version() == start + 3  # each write moved it once
    await store.close()


def test_the_sqlite_tenant_store_keeps_its_contract(tmp_path: Path) -> None:
    asyncio.run(contract_sqlite(tmp_path / "t.db"))


async def contract_sqlite(path: Path) -> None:
    await contract(await SqliteTenantStore.open(path))


def test_the_redis_tenant_store_keeps_its_contract(redis_server: RedisServer) -> None:
    asyncio.run(contract(connect(redis_server.url)))
