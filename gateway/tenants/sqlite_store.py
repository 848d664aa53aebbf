"""Tenants in SQLite: a table in the key store's file, and a one-row version counter.

The tables are created if missing and never touch the key store's
`user_version`. Each write and its version bump are one `BEGIN IMMEDIATE`
transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TypeVar

from gateway.sqlite_file import ThreadedConnection, connect, mapped_errors, transaction
from gateway.tenants.records import TenantRecord, record_from_json, record_to_json
from gateway.tenants.store import (
    TenantExists,
    TenantNotFound,
    TenantStoreError,
    TenantStoreUnavailable,
)

T = TypeVar("T")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS tenants (name TEXT PRIMARY KEY, body TEXT NOT NULL) STRICT",
    "CREATE TABLE IF NOT EXISTS tenants_version (id INTEGER PRIMARY KEY CHECK (id = 1),"
    " version INTEGER NOT NULL) STRICT",
    "INSERT OR IGNORE INTO tenants_version (id, version) VALUES (1, 0)",
)
_BUMP = "UPDATE tenants_version SET version = version + 1 WHERE id = 1"


class SqliteTenantStore:
    """A `TenantStore` in the key store's SQLite file; build it with `await open(path)`."""

    def __init__(self, connection: sqlite3.Connection, path: str) -> None:
        self._db = ThreadedConnection(connection)
        self._path = path

    @classmethod
    async def open(cls, path: str | Path, *, read_only: bool = False) -> SqliteTenantStore:
        with _mapped(f"open the SQLite tenant store {path}"):
            connection = await asyncio.to_thread(connect, Path(path), read_only, _create)
        return cls(connection, str(path))

    async def all(self) -> list[TenantRecord]:
        def select(db: sqlite3.Connection) -> list[tuple[str]]:
            return db.execute("SELECT body FROM tenants ORDER BY name").fetchall()

        return [record_from_json(body) for (body,) in await self._run("read", select)]

    async def get(self, name: str) -> TenantRecord | None:
        def select(db: sqlite3.Connection) -> tuple[str] | None:
            row: tuple[str] | None
            row = db.execute("SELECT body FROM tenants WHERE name = ?", (name,)).fetchone()
            return row

        row = await self._run("read", select)
        return None if row is None else record_from_json(row[0])

    async def create(self, record: TenantRecord) -> None:
        def insert(db: sqlite3.Connection) -> None:
            with transaction(db):
                try:
                    db.execute(
                        "INSERT INTO tenants (name, body) VALUES (?, ?)",
                        (record.name, record_to_json(record)),
                    )
                except sqlite3.IntegrityError:
                    raise TenantExists(record.name) from None
                db.execute(_BUMP)

        await self._run("write", insert)

    async def replace(self, record: TenantRecord) -> None:
        def update(db: sqlite3.Connection) -> None:
            with transaction(db):
                cursor = db.execute(
                    "UPDATE tenants SET body = ? WHERE name = ?",
                    (record_to_json(record), record.name),
                )
                if cursor.rowcount == 0:
                    raise TenantNotFound(record.name)
                db.execute(_BUMP)

        await self._run("write", update)

    async def delete(self, name: str) -> None:
        def remove(db: sqlite3.Connection) -> None:
            with transaction(db):
                if db.execute("DELETE FROM tenants WHERE name = ?", (name,)).rowcount == 0:
                    raise TenantNotFound(name)
                db.execute(_BUMP)

        await self._run("write", remove)

    async def version(self) -> int:
        def select(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT version FROM tenants_version WHERE id = 1").fetchone()
            return 0 if row is None else int(row[0])

        return await self._run("read", select)

    async def close(self) -> None:
        await self._db.close()

    async def _run(self, action: str, step: Callable[[sqlite3.Connection], T]) -> T:
        if self._db.closed:
            raise TenantStoreUnavailable(f"could not {action} the tenant store: it is closed")
        with _mapped(f"{action} the SQLite tenant store {self._path}"):
            return await self._db.run(step)


def _mapped(action: str) -> AbstractContextManager[None]:
    return mapped_errors(action, TenantStoreUnavailable, TenantStoreError)


def _create(db: sqlite3.Connection, read_only: bool) -> None:
    if not read_only:
        for statement in _SCHEMA:
            db.execute(statement)
