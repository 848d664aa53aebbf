"""`vllm-gateway keys export` / `keys import`: SQLite to Redis and back, with real gateways.

Keys are made in every state a store keeps (active with limits, revoked, expiring,
expired, rotated within its grace period), real requests through the simulator
count usage, the source gateway stops, and the file moves the store. Gateways on
the target then take the old keys, show the same usage, and share a revocation.
"""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.keys.records import KeyChanges, new_key, new_secret
from gateway.keys.sqlite import SqliteKeyStore
from gateway.principal import Limits, Quotas
from tests.servers import TEST_PEPPER, Process, RedisServer, free_port, run_gateway
from tests.store_transfer import (
    admin,
    chat,
    keys_cli,
    redis_config,
    refused_within,
    sqlite_config,
    usage,
    wait_for_requests,
)

QUOTAS = Quotas(tokens_per_month=10**9, cost_per_day=1_500_000)
CLI_PORT = 8080  # the CLI reads the settings' store, never their listener
OTHER_PEPPER = "another-pepper-for-tests-only-0123456789"
# (token name, requests made with it before the move, answer after it)
REQUESTS = {"active": (3, 200), "expiring": (1, 200), "rotated-old": (1, 200), "rotated": (2, 200)}


async def _seed(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Keys in every state, straight into a SQLite store: (tokens, ids) by name."""
    pepper = TEST_PEPPER.encode()
    now = datetime.now(UTC)
    specs = {
        "active": {
            "tenant": "acme",
            "limits": Limits(requests_per_minute=600, max_tokens=64, quotas=QUOTAS),
        },
        "revoked": {"tenant": "acme"},
        "expiring": {"tenant": "beta", "expires_at": now + timedelta(days=1)},
        "expired": {"tenant": "beta", "expires_at": now - timedelta(minutes=1)},
        "rotated": {"tenant": "beta", "models": frozenset({"sim-model"})},
    }
    tokens, ids = {}, {}
    store = await SqliteKeyStore.open(path)
    try:
        for name, fields in specs.items():
            key, record = new_key(pepper, name=name, created_at=now, **fields)  # type: ignore[arg-type]
            await store.create(record)
            tokens[name], ids[name] = key.token, key.id
        await store.update(ids["revoked"], KeyChanges(revoked_at=now))
        rotated, rotation = new_secret(pepper, ids["rotated"], grace_until=now + timedelta(hours=1))
        await store.update(ids["rotated"], KeyChanges(rotation=rotation))
        tokens["rotated-old"], tokens["rotated"] = tokens["rotated"], rotated.token
    finally:
        await store.close()
    return tokens, ids


def _use(gateway: Process, tokens: dict[str, str]) -> None:
    for name, (count, status) in REQUESTS.items():
        for _ in range(count):
            assert chat(gateway, tokens[name]) == status, name
    for name in ("revoked", "expired"):
        assert chat(gateway, tokens[name]) == 401, name


def _usage_of(gateway: Process, ids: dict[str, str]) -> dict[str, object]:
    owners = [f"keys/{key_id}" for key_id in ids.values()] + ["tenants/acme", "tenants/beta"]
    return {owner: usage(gateway, owner) for owner in owners}


@dataclass
class Moved:
    gateways: list[Process]
    tokens: dict[str, str]
    ids: dict[str, str]
    before: dict[str, object]  # usage on the source gateway
    dump: Path
    reimport: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def redis(module_redis: RedisServer) -> RedisServer:
    return module_redis


@pytest.fixture(scope="module")
def moved(module_tmp: Path, sim: Process, redis: RedisServer) -> Iterator[Moved]:
    """A SQLite store used by a gateway, exported, imported into Redis; two gateways on it."""
    tmp_path = module_tmp / "moved"
    tmp_path.mkdir()
    sqlite_path = tmp_path / "source" / "keys.db"
    tokens, ids = asyncio.run(_seed(sqlite_path))
    source = sqlite_config(free_port(), sim, sqlite_path)
    with run_gateway(tmp_path, source) as gateway:
        _use(gateway, tokens)
        admin(gateway, "PATCH", f"keys/{ids['active']}", {"name": "renamed"})  # an audit entry
        wait_for_requests(gateway, "tenants/beta", 4)
        wait_for_requests(gateway, "tenants/acme", 3)
        before = _usage_of(gateway, ids)
    dump = tmp_path / "store.jsonl"
    exported = keys_cli(tmp_path, "export", dump, source)
    assert exported.returncode == 0, exported.stderr
    assert "Exported 5 keys" in exported.stdout, exported.stdout
    target = redis_config(free_port(), sim, redis.url)
    imported = keys_cli(tmp_path, "import", dump, target)
    assert imported.returncode == 0, imported.stderr
    reimport = keys_cli(tmp_path, "import", dump, target)
    with ExitStack() as stack:
        gateways = [stack.enter_context(run_gateway(tmp_path, target))]
        second = redis_config(free_port(), sim, redis.url)
        gateways.append(stack.enter_context(run_gateway(tmp_path, second)))
        yield Moved(gateways, tokens, ids, before, dump, reimport)


def test_the_export_holds_hashes_and_no_secret(moved: Moved) -> None:
    assert stat.S_IMODE(moved.dump.stat().st_mode) == 0o600
    text = moved.dump.read_text()
    for token in moved.tokens.values():
        assert token.rsplit("_", 1)[1] not in text  # the secret part of every key
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["format"] == "vllm-gateway-store" and lines[0]["version"] == 2
    assert lines[-1] == {"kind": "end", "tenants": 0, "keys": 5, "usage": 3, "audit": 1}


def test_importing_twice_is_refused_and_counts_nothing_twice(
    moved: Moved, redis: RedisServer
) -> None:
    assert moved.reimport.returncode == 1
    assert "is not empty" in moved.reimport.stderr, moved.reimport.stderr
    assert "nothing was imported" in moved.reimport.stderr
    assert redis.url not in moved.reimport.stderr
    assert _usage_of(moved.gateways[0], moved.ids) == moved.before


def test_old_keys_work_on_redis_with_the_same_usage(moved: Moved) -> None:
    (first, second), tokens, ids = moved.gateways, moved.tokens, moved.ids
    assert _usage_of(second, ids) == moved.before  # read before any new request
    record = admin(first, "GET", f"keys/{ids['active']}")
    assert record["name"] == "renamed" and record["limits"]["requests_per_minute"] == 600
    assert record["tenant"] == "acme" and record["limits"]["max_tokens"] == 64
    for gateway in (first, second):
        for name in ("active", "expiring", "rotated-old", "rotated"):
            assert chat(gateway, tokens[name]) == 200, name
        for name in ("revoked", "expired"):
            assert chat(gateway, tokens[name]) == 401, name
    audit = admin(first, "GET", "audit")["data"]
    assert [entry["action"] for entry in audit][:2] == ["store.import", "key.update"], audit


def test_quotas_move_with_their_keys(moved: Moved) -> None:
    for gateway in moved.gateways:
        quotas = admin(gateway, "GET", f"keys/{moved.ids['active']}")["limits"]["quotas"]
        assert (quotas["tokens_per_month"], quotas["cost_per_day"]) == (10**9, 1.5)
        assert quotas["tokens_per_day"] is None


def test_a_revocation_on_one_gateway_is_refused_by_the_other(moved: Moved) -> None:
    (first, second), tokens, ids = moved.gateways, moved.tokens, moved.ids
    assert chat(second, tokens["active"]) == 200
    admin(first, "POST", f"keys/{ids['active']}/revoke")
    assert refused_within(second, tokens["active"])


def test_redis_to_sqlite(tmp_path: Path, sim: Process, redis_server: RedisServer) -> None:
    """Keys made through a Redis gateway's admin API move to a fresh SQLite file."""
    source = redis_config(free_port(), sim, redis_server.url)
    with run_gateway(tmp_path, source) as gateway:
        made = {
            name: admin(gateway, "POST", "keys", {"tenant": "acme", "name": name, **extra})
            for name, extra in {
                "active": {"limits": {"tokens_per_minute": 100000}},
                "revoked": {},
                "rotated": {"expires_at": (datetime.now(UTC) + timedelta(days=7)).isoformat()},
            }.items()
        }
        ids = {name: data["id"] for name, data in made.items()}
        tokens = {name: data["key"] for name, data in made.items()}
        body = {"grace_seconds": 3600}
        tokens["rotated-old"] = tokens["rotated"]
        tokens["rotated"] = admin(gateway, "POST", f"keys/{ids['rotated']}/rotate", body)["key"]
        admin(gateway, "POST", f"keys/{ids['revoked']}/revoke")
        for name in ("active", "active", "rotated", "rotated-old"):
            assert chat(gateway, tokens[name]) == 200
        wait_for_requests(gateway, "tenants/acme", 4)
        before = {
            owner: usage(gateway, owner) for owner in ("tenants/acme", f"keys/{ids['active']}")
        }
    dump = tmp_path / "from-redis.jsonl"
    assert keys_cli(tmp_path, "export", dump, source).returncode == 0
    target = sqlite_config(free_port(), sim, tmp_path / "target" / "keys.db")
    imported = keys_cli(tmp_path, "import", dump, target)
    assert imported.returncode == 0, imported.stderr
    with run_gateway(tmp_path, target) as gateway:
        assert {owner: usage(gateway, owner) for owner in before} == before
        for name in ("active", "rotated", "rotated-old"):
            assert chat(gateway, tokens[name]) == 200, name
        assert chat(gateway, tokens["revoked"]) == 401


def test_a_file_of_another_pepper_is_refused(tmp_path: Path, sim: Process) -> None:
    source_path = tmp_path / "source.db"
    asyncio.run(_seed(source_path))
    dump = tmp_path / "store.jsonl"
    assert (
        keys_cli(tmp_path, "export", dump, sqlite_config(CLI_PORT, sim, source_path)).returncode
        == 0
    )
    target_path = tmp_path / "target.db"
    refused = keys_cli(
        tmp_path, "import", dump, sqlite_config(CLI_PORT, sim, target_path, OTHER_PEPPER)
    )
    assert refused.returncode == 1
    assert "another pepper" in refused.stderr and "would verify" in refused.stderr
    assert OTHER_PEPPER not in refused.stderr and TEST_PEPPER not in refused.stderr
    assert not target_path.exists()  # refused before the store was opened


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda lines: [lines[0].replace('"version": 2', '"version": 3'), *lines[1:]],
            "format version 3",
        ),
        (lambda lines: lines[:-1], "truncated"),
        (lambda lines: ['{"hello": 1}', *lines[1:]], "not a vllm-gateway export"),
    ],
)
def test_a_file_this_gateway_cannot_read_is_refused(
    tmp_path: Path, sim: Process, edit: Callable[[list[str]], list[str]], message: str
) -> None:
    source_path = tmp_path / "source.db"
    asyncio.run(_seed(source_path))
    dump = tmp_path / "store.jsonl"
    assert (
        keys_cli(tmp_path, "export", dump, sqlite_config(CLI_PORT, sim, source_path)).returncode
        == 0
    )
    edited = tmp_path / "edited.jsonl"
    edited.write_text("\n".join(edit(dump.read_text().splitlines())) + "\n")
    target_path = tmp_path / "target.db"
    refused = keys_cli(tmp_path, "import", edited, sqlite_config(CLI_PORT, sim, target_path))
    assert refused.returncode == 1 and message in refused.stderr, refused.stderr
    assert not target_path.exists()


def test_export_refuses_to_overwrite_and_a_missing_store(tmp_path: Path, sim: Process) -> None:
    missing = keys_cli(
        tmp_path, "export", tmp_path / "x.jsonl", sqlite_config(CLI_PORT, sim, tmp_path / "no.db")
    )
    assert missing.returncode == 1 and "there is no SQLite store" in missing.stderr
    assert not (tmp_path / "no.db").exists()
    source_path = tmp_path / "source.db"
    asyncio.run(_seed(source_path))
    taken = tmp_path / "taken.jsonl"
    taken.write_text("keep me\n")
    refused = keys_cli(tmp_path, "export", taken, sqlite_config(CLI_PORT, sim, source_path))
    assert refused.returncode == 1 and "exists" in refused.stderr
    assert taken.read_text() == "keep me\n"
