"""The backup and restore commands of docs/operations.md, run as written against real
processes: a SQLite store copied while its gateway serves, a Redis snapshot and its
append-only files, each restored under a fresh gateway whose old keys still work."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gateway.cli import build_parser
from tests.deploy_files import REPO
from tests.servers import Process, RedisServer, free_port, run_gateway, stop, wait_for_port
from tests.store_transfer import admin, chat, redis_config, sqlite_config
from tests.test_deploy_docs import argparse_tree, assert_command_exists

# The commands as docs/operations.md gives them ({db}, {backup} filled in).
SQLITE_BACKUPS = {
    "sqlite3": ["sqlite3", "{db}", ".backup '{backup}'"],
    "python": [
        sys.executable,
        "-c",
        "import sqlite3, sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))",
        "{db}",
        "{backup}",
    ],
}


def run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("tool", sorted(SQLITE_BACKUPS))
def test_sqlite_online_backup_restores_under_a_fresh_gateway(
    tmp_path: Path, sim: Process, tool: str
) -> None:
    db = tmp_path / "live" / "keys.db"
    backup = tmp_path / "keys-backup.db"
    config = sqlite_config(free_port(), sim, db)
    with run_gateway(tmp_path, config) as gateway:
        kept = admin(gateway, "POST", "keys", {"tenant": "acme"})["key"]
        assert chat(gateway, kept) == 200
        # While the gateway serves: the backup API copies a consistent snapshot.
        command = [part.format(db=db, backup=backup) for part in SQLITE_BACKUPS[tool]]
        assert shutil.which(command[0]), (
            f"{command[0]} is missing: run scripts/install-system-deps.sh"
        )
        run(*command)
        later = admin(gateway, "POST", "keys", {"tenant": "acme"})["key"]
        assert chat(gateway, kept) == 200
    # Restore, gateway stopped: the copy is the store (no -wal or -shm beside it).
    restored = tmp_path / "restored" / "keys.db"
    restored.parent.mkdir()
    shutil.copy(backup, restored)
    with run_gateway(tmp_path, sqlite_config(free_port(), sim, restored)) as gateway:
        assert chat(gateway, kept) == 200
        assert chat(gateway, later) == 401  # made after the backup


@contextmanager
def redis_from(directory: Path, *, appendonly: bool) -> Iterator[str]:
    """A redis-server on DIRECTORY as docs/operations.md starts one to restore; its URL."""
    binary = shutil.which("redis-server")
    assert binary is not None
    port = free_port()
    mode = "yes" if appendonly else "no"
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    log = directory / "restore.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([*args, "--appendonly", mode, "--save", ""], stdout=out, stderr=out)
    try:
        wait_for_port(port, proc, log)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)


def _bgsave(url: str) -> None:
    run("redis-cli", "-u", url, "BGSAVE")  # answers once the snapshot's fork has started
    deadline = time.monotonic() + 30
    while "rdb_bgsave_in_progress:0" not in run("redis-cli", "-u", url, "INFO", "persistence"):
        assert time.monotonic() < deadline, "BGSAVE did not finish"
        time.sleep(0.1)
    assert "rdb_last_bgsave_status:ok" in run("redis-cli", "-u", url, "INFO", "persistence")


def test_redis_snapshot_and_append_only_files_restore(
    tmp_path: Path, sim: Process, redis_server: RedisServer
) -> None:
    with run_gateway(tmp_path, redis_config(free_port(), sim, redis_server.url)) as gateway:
        kept = admin(gateway, "POST", "keys", {"tenant": "acme"})["key"]
        assert chat(gateway, kept) == 200
        _bgsave(redis_server.url)  # while it serves
        snapshot = tmp_path / "snapshot"
        snapshot.mkdir()
        shutil.copy(redis_server.directory / "dump.rdb", snapshot / "dump.rdb")
    redis_server.stop()  # SIGTERM: the append-only files are complete on disk
    copied = tmp_path / "aof-copy"
    copied.mkdir()
    shutil.copytree(redis_server.directory / "appendonlydir", copied / "appendonlydir")
    # The snapshot: loaded with AOF off, then AOF switched on, which writes it out.
    with redis_from(snapshot, appendonly=False) as url:
        run("redis-cli", "-u", url, "CONFIG", "SET", "appendonly", "yes")
        with run_gateway(tmp_path, redis_config(free_port(), sim, url)) as gateway:
            assert chat(gateway, kept) == 200
    assert list((snapshot / "appendonlydir").glob("*.aof")), "AOF on did not write the data"
    # The copied append-only directory, as a Redis with AOF on starts from it.
    with (
        redis_from(copied, appendonly=True) as url,
        run_gateway(tmp_path, redis_config(free_port(), sim, url)) as gateway,
    ):
        assert chat(gateway, kept) == 200


def test_every_vllm_gateway_command_of_the_operations_page_exists() -> None:
    text = (REPO / "docs" / "operations.md").read_text()
    commands = re.findall(r"^vllm-gateway ([^\n`]+)", text, re.M)
    commands += re.findall(r"`vllm-gateway ([^`]+)`", text)
    assert len(commands) >= 4, commands
    tree = argparse_tree(build_parser())
    for command in commands:
        assert_command_exists("vllm-gateway", shlex.split(command), tree)
