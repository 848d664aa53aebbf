"""The embedded key store: one SQLite file in WAL mode, on one node.

sqlite3 blocks, so every call runs in a worker thread (`asyncio.to_thread`)
behind a lock: one connection, one statement or transaction at a time. Writes
are rare (admin changes, throttled `record_use`), so `synchronous=FULL`: a
revocation that was acknowledged survives a power cut.

Change notifications reach only subscribers of the same store object: run one
gateway process per SQLite file, or use the Redis store.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from gateway.keys.records import (
    KeyChanges,
    KeyRecord,
    decode_limits,
    decode_metadata,
    decode_models,
    encode_limits,
    encode_metadata,
    encode_models,
    format_time,
    parse_time,
)
from gateway.keys.store import (
    KeyExists,
    KeyNotFound,
    KeyPage,
    KeyStoreError,
    KeyStoreUnavailable,
    LocalChanges,
    check_page,
)
from gateway.sqlite_file import ThreadedConnection, connect, mapped_errors, transaction

T = TypeVar("T")

SCHEMA_VERSION = 1

_SCHEMA = (
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        secret_hash TEXT NOT NULL,
        created_at TEXT NOT NULL,
        models TEXT,
        limits TEXT NOT NULL,
        expires_at TEXT,
        last_used_at TEXT,
        revoked_at TEXT,
        metadata TEXT NOT NULL,
        previous_secret_hash TEXT,
        previous_valid_until TEXT
    ) STRICT
    """,
    "CREATE INDEX api_keys_by_tenant ON api_keys (tenant, id)",
)
_COLUMN_NAMES = (
    "id", "tenant", "name", "secret_hash", "created_at", "models", "limits", "expires_at",
    "last_used_at", "revoked_at", "metadata", "previous_secret_hash", "previous_valid_until",
)  # fmt: skip
_COLUMNS = ", ".join(_COLUMN_NAMES)
_MUTABLE = (
    "name", "secret_hash", "models", "limits", "expires_at", "revoked_at",
    "metadata", "previous_secret_hash", "previous_valid_until",
)  # fmt: skip
Row = tuple[str | None, ...]


class SqliteKeyStore:
    """A `KeyStore` in one SQLite file. Build it with `await SqliteKeyStore.open(path)`."""

    def __init__(self, connection: sqlite3.Connection, path: str) -> None:
        self._db = ThreadedConnection(connection)
        self._path = path
        self._changes = LocalChanges()

    @classmethod
    async def open(cls, path: str | Path, *, read_only: bool = False) -> SqliteKeyStore:
        """Open (and on first use create) the store; `read_only` opens it with `mode=ro`."""
        with _mapped(f"open the SQLite key store {path}"):
            connection = await asyncio.to_thread(connect, Path(path), read_only, _prepare)
        return cls(connection, str(path))

    async def create(self, record: KeyRecord) -> None:
        await self._run(f"create key {record.id}", lambda db: _insert(db, record))
        self._changes.publish(record.id)

    async def get(self, key_id: str) -> KeyRecord | None:
        row = await self._run(f"read key {key_id}", lambda db: _select_one(db, key_id))
        return None if row is None else _record(row)

    async def list(
        self, *, tenant: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> KeyPage:
        check_page(limit)
        after = cursor or ""
        rows = await self._run("list keys", lambda db: _select_page(db, tenant, after, limit + 1))
        page = [_record(row) for row in rows[:limit]]
        return page, (page[-1].id if len(rows) > limit else None)

    async def update(self, key_id: str, changes: KeyChanges) -> KeyRecord:
        updated = await self._run(f"update key {key_id}", lambda db: _update(db, key_id, changes))
        self._changes.publish(key_id)
        return updated

    async def record_use(self, key_id: str, when: datetime) -> None:
        stamp = format_time(when)
        await self._run(f"record the use of key {key_id}", lambda db: _touch(db, key_id, stamp))

    def changes(self) -> AbstractAsyncContextManager[AsyncIterator[str]]:
        return self._changes.subscribe()

    async def close(self) -> None:
        await self._db.close()

    async def _run(self, action: str, step: Callable[[sqlite3.Connection], T]) -> T:
        if self._db.closed:
            raise KeyStoreUnavailable(f"could not {action}: the key store is closed")
        with _mapped(f"{action} in the SQLite key store {self._path}"):
            return await self._db.run(step)


def _mapped(action: str) -> AbstractContextManager[None]:
    return mapped_errors(action, KeyStoreUnavailable, KeyStoreError)


def _prepare(db: sqlite3.Connection, _read_only: bool) -> None:
    _migrate(db)


def _migrate(db: sqlite3.Connection) -> None:
    if _schema_version(db) == SCHEMA_VERSION:
        return
    with transaction(db):
        version = _schema_version(db)  # again, now that no other process can write
        if version > SCHEMA_VERSION:
            raise KeyStoreError(
                f"the key store has schema version {version}, written by a newer gateway;"
                f" this one knows version {SCHEMA_VERSION}"
            )
        if version < 0:
            raise KeyStoreError(
                f"the key store has schema version {version}, which no gateway writes"
            )
        if version == 0:
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _schema_version(db: sqlite3.Connection) -> int:
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    return version


def _insert(db: sqlite3.Connection, record: KeyRecord) -> None:
    placeholders = ", ".join("?" * len(_COLUMN_NAMES))
    try:
        db.execute(f"INSERT INTO api_keys ({_COLUMNS}) VALUES ({placeholders})", _row(record))  # noqa: S608
    except sqlite3.IntegrityError as exc:
        raise KeyExists(record.id) from exc


def _select_one(db: sqlite3.Connection, key_id: str) -> Row | None:
    cursor = db.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))  # noqa: S608
    row: Row | None = cursor.fetchone()
    return row


def _select_page(db: sqlite3.Connection, tenant: str | None, after: str, count: int) -> list[Row]:
    if tenant is None:
        query = f"SELECT {_COLUMNS} FROM api_keys WHERE id > ? ORDER BY id LIMIT ?"  # noqa: S608
        rows: list[Row] = db.execute(query, (after, count)).fetchall()
    else:
        query = f"SELECT {_COLUMNS} FROM api_keys WHERE tenant = ? AND id > ? ORDER BY id LIMIT ?"  # noqa: S608
        rows = db.execute(query, (tenant, after, count)).fetchall()
    return rows


def _update(db: sqlite3.Connection, key_id: str, changes: KeyChanges) -> KeyRecord:
    with transaction(db):
        row = _select_one(db, key_id)
        if row is None:
            raise KeyNotFound(key_id)
        updated = changes.apply(_record(row))
        values = dict(zip(_COLUMN_NAMES, _row(updated), strict=True))
        assignments = ", ".join(f"{name} = ?" for name in _MUTABLE)
        db.execute(
            f"UPDATE api_keys SET {assignments} WHERE id = ?",  # noqa: S608
            (*(values[name] for name in _MUTABLE), key_id),
        )
    return updated


def _touch(db: sqlite3.Connection, key_id: str, when: str) -> None:
    db.execute(
        "UPDATE api_keys SET last_used_at = ?1"
        " WHERE id = ?2 AND (last_used_at IS NULL OR last_used_at < ?1)",
        (when, key_id),
    )


def _row(record: KeyRecord) -> Row:
    """The record as the values of `_COLUMNS`, in order."""
    return (
        record.id,
        record.tenant,
        record.name,
        record.secret_hash,
        format_time(record.created_at),
        encode_models(record.models),
        encode_limits(record.limits),
        format_time(record.expires_at),
        format_time(record.last_used_at),
        format_time(record.revoked_at),
        encode_metadata(record.metadata),
        record.previous_secret_hash,
        format_time(record.previous_valid_until),
    )


def _record(row: Row) -> KeyRecord:
    try:
        return _decode(row)
    except ValueError as exc:  # a row this code did not write
        raise KeyStoreError(f"a stored key record is invalid: {exc}") from exc


def _decode(row: Row) -> KeyRecord:
    (key_id, tenant, name, secret_hash, created_at, models, limits, expires_at, last_used_at,
     revoked_at, metadata, previous_hash, previous_until) = row  # fmt: skip
    created = parse_time(created_at)
    if key_id is None or tenant is None or name is None or secret_hash is None or created is None:
        raise ValueError("a required column is empty")
    return KeyRecord(
        id=key_id,
        tenant=tenant,
        name=name,
        secret_hash=secret_hash,
        created_at=created,
        models=decode_models(models),
        limits=decode_limits(limits or "{}"),
        expires_at=parse_time(expires_at),
        last_used_at=parse_time(last_used_at),
        revoked_at=parse_time(revoked_at),
        metadata=decode_metadata(metadata or "{}"),
        previous_secret_hash=previous_hash,
        previous_valid_until=parse_time(previous_until),
    )
