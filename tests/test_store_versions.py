"""Store versions: an unversioned or older store is brought up to date at start, and a
store written by a newer gateway is refused by name, never read as if it were known."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
import redis

from gateway.keys.sqlite import SCHEMA_VERSION, SqliteKeyStore
from gateway.redis_layout import LAYOUT_VERSION
from gateway.settings import SettingsError, load_settings
from tests.servers import Process, RedisServer, create_key, free_port, run_gateway
from tests.store_transfer import admin, chat, keys_cli, redis_config, sqlite_config


def _sqlite_store(path: Path, version: int) -> None:
    async def make() -> None:
        await (await SqliteKeyStore.open(path)).close()

    asyncio.run(make())
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {version}")


def test_a_sqlite_store_of_a_newer_schema_stops_the_gateway(tmp_path: Path, sim: Process) -> None:
    path = tmp_path / "keys.db"
    _sqlite_store(path, SCHEMA_VERSION + 98)
    with (
        pytest.raises(RuntimeError) as failed,
        run_gateway(tmp_path, sqlite_config(free_port(), sim, path)),
    ):
        pass
    message = str(failed.value)
    assert f"schema version {SCHEMA_VERSION + 98}" in message, message
    assert f"this one knows version {SCHEMA_VERSION}" in message
    exported = keys_cli(tmp_path, "export", tmp_path / "x.jsonl", sqlite_config(8080, sim, path))
    assert exported.returncode == 1 and "written by a newer gateway" in exported.stderr
    with sqlite3.connect(path) as db:  # refused, not migrated down
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 98


def test_a_redis_store_of_a_newer_layout_stops_the_gateway(
    tmp_path: Path, sim: Process, redis_server: RedisServer
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set("vgw:layout", LAYOUT_VERSION + 1)
    with (
        pytest.raises(RuntimeError) as failed,
        run_gateway(tmp_path, redis_config(free_port(), sim, redis_server.url)),
    ):
        pass
    message = str(failed.value)
    assert f"layout version {LAYOUT_VERSION + 1}, written by a newer gateway" in message, message
    assert f"this gateway knows version {LAYOUT_VERSION}" in message
    dump = tmp_path / "x.jsonl"
    exported = keys_cli(tmp_path, "export", dump, redis_config(8080, sim, redis_server.url))
    assert exported.returncode == 1 and "newer gateway" in exported.stderr
    assert client.get("vgw:layout") == str(LAYOUT_VERSION + 1).encode()


def test_an_unversioned_redis_store_is_stamped_and_keeps_its_keys(
    tmp_path: Path, sim: Process, redis_server: RedisServer
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    config = redis_config(free_port(), sim, redis_server.url)
    with run_gateway(tmp_path, config) as gateway:
        token = gateway_key(gateway)
        assert client.get("vgw:layout") == str(LAYOUT_VERSION).encode()
    client.delete("vgw:layout")  # what a gateway from before the version left
    with run_gateway(tmp_path, config) as gateway:
        assert chat(gateway, token) == 200
    assert client.get("vgw:layout") == str(LAYOUT_VERSION).encode()


def gateway_key(gateway: Process) -> str:
    created: str = admin(gateway, "POST", "keys", {"tenant": "acme"})["key"]
    assert chat(gateway, created) == 200
    return created


def test_an_older_sqlite_store_is_migrated(tmp_path: Path, sim: Process) -> None:
    """Version 0 is a file no gateway has written yet: the schema is created in place."""
    path = tmp_path / "keys.db"
    sqlite3.connect(path).close()
    config = sqlite_config(free_port(), sim, path)
    token = create_key(config, tenant="acme")
    with run_gateway(tmp_path, config) as gateway:
        assert chat(gateway, token) == 200
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_settings_unknown_to_this_version_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text("auth:\n  key_store:\n    backend: sqlite\n    compression: zstd\n")
    with pytest.raises(SettingsError, match=r"auth\.key_store\.compression"):
        load_settings(path, environ={})
