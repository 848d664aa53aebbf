"""The admin audit log: who did what to which key, and when. Never a secret.

    AuditLogError             the log could not do what was asked
    └── AuditLogUnavailable   not now: a read-only or full disk, Redis down

Entries are appended after the change they describe has been written, and read
newest first. Three logs keep the same contract: `MemoryAuditLog` (tests,
embedding), `SqliteAuditLog` (its own table, next to or apart from the key
store) and `RedisAuditLog` (a stream, shared by every gateway replica).
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Protocol, TypeAlias, TypeVar

from gateway.keys.records import format_time, parse_time
from gateway.sqlite_file import ThreadedConnection, connect, mapped_errors

T = TypeVar("T")

MAX_PAGE = 1000


class AuditLogError(Exception):
    """Base of the audit log errors; the message is fit to show an operator."""


class AuditLogUnavailable(AuditLogError):
    """The log cannot be written or read now."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One admin action. `actor` names the credential (`token:0`, `jwt:<sub>`), never holds it.

    `detail` holds non-secret facts, such as the fields an update changed. `id` is
    given by the log on `append` and orders entries; it is empty before that.
    """

    at: datetime
    actor: str
    action: str
    key_id: str | None = None
    tenant: str | None = None
    detail: Mapping[str, str] = field(default_factory=dict)
    id: str = ""


AuditPage: TypeAlias = tuple[list[AuditEntry], str | None]


class AuditLog(Protocol):
    """Where admin actions are recorded. Every method may raise `AuditLogUnavailable`."""

    async def append(self, entry: AuditEntry) -> AuditEntry:
        """Record `entry`; return it with its `id`."""

    async def list(self, *, limit: int = 100, cursor: str | None = None) -> AuditPage:
        """Up to `limit` entries (1..1000), newest first, older than `cursor`.

        Returns the page and the cursor of the next one, None when there is no more.
        `ValueError` for a cursor this log did not hand out.
        """

    async def close(self) -> None:
        """Release the log's connections; idempotent."""


def check_page(limit: int) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"a page holds 1 to {MAX_PAGE} audit entries, not {limit}")


# A cursor names a position: `<n>` or `<n>-<m>` (a Redis stream id); 19 digits fit 63 bits.
CURSOR_PATTERN = r"^[0-9]{1,18}(-[0-9]{1,18})?$"  # 18 digits: within SQLite integers
_CURSOR = re.compile(CURSOR_PATTERN)


def parse_cursor(cursor: str) -> tuple[int, int]:
    """The two numbers of a cursor; `ValueError` for anything else."""
    if not _CURSOR.fullmatch(cursor):
        raise ValueError("not a cursor of this audit log")
    first, _, second = cursor.partition("-")
    return int(first), int(second or "0")


def _sequence(cursor: str | None) -> int | None:
    return None if cursor is None else parse_cursor(cursor)[0]


class MemoryAuditLog:
    """An `AuditLog` in a list: for tests and embedding, nothing durable."""

    def __init__(self) -> None:
        self._entries: list[AuditEntry] = []

    async def append(self, entry: AuditEntry) -> AuditEntry:
        stored = replace(entry, id=str(len(self._entries) + 1), detail=dict(entry.detail))
        self._entries.append(stored)
        return stored

    async def list(self, *, limit: int = 100, cursor: str | None = None) -> AuditPage:
        check_page(limit)
        before = _sequence(cursor)
        end = len(self._entries) if before is None else min(before - 1, len(self._entries))
        page = self._entries[max(end - limit, 0) : max(end, 0)][::-1]
        more = end - limit > 0
        return page, (page[-1].id if more and page else None)

    async def close(self) -> None:
        return None


_SCHEMA = """
    CREATE TABLE IF NOT EXISTS admin_audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        key_id TEXT,
        tenant TEXT,
        detail TEXT NOT NULL
    ) STRICT
"""
_Row = tuple[int, str, str, str, str | None, str | None, str]


class SqliteAuditLog:
    """An `AuditLog` in a SQLite table (WAL). Build it with `await SqliteAuditLog.open(path)`.

    The file may be the key store's: the table is separate and so is the connection.
    """

    def __init__(self, connection: sqlite3.Connection, path: str) -> None:
        self._db = ThreadedConnection(connection)
        self._path = path

    @classmethod
    async def open(cls, path: str | Path, *, read_only: bool = False) -> SqliteAuditLog:
        with _sqlite_mapped(f"open the SQLite audit log {path}"):
            connection = await asyncio.to_thread(connect, Path(path), read_only, _create_table)
        return cls(connection, str(path))

    async def append(self, entry: AuditEntry) -> AuditEntry:
        row = (
            format_time(entry.at), entry.actor, entry.action, entry.key_id, entry.tenant,
            json.dumps(dict(entry.detail), sort_keys=True),
        )  # fmt: skip

        def insert(db: sqlite3.Connection) -> int | None:
            return db.execute(
                "INSERT INTO admin_audit (at, actor, action, key_id, tenant, detail)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                row,
            ).lastrowid

        rowid = await self._run("append to", insert)
        return replace(entry, id=str(rowid), detail=dict(entry.detail))

    async def list(self, *, limit: int = 100, cursor: str | None = None) -> AuditPage:
        check_page(limit)
        before = _sequence(cursor)

        def select(db: sqlite3.Connection) -> list[_Row]:
            return db.execute(
                "SELECT id, at, actor, action, key_id, tenant, detail FROM admin_audit"
                " WHERE id < ? ORDER BY id DESC LIMIT ?",
                (2**63 - 1 if before is None else before, limit + 1),
            ).fetchall()

        rows = await self._run("read", select)
        page = [_entry_from_row(row) for row in rows[:limit]]
        return page, (page[-1].id if len(rows) > limit else None)

    async def close(self) -> None:
        await self._db.close()

    async def _run(self, verb: str, step: Callable[[sqlite3.Connection], T]) -> T:
        if self._db.closed:
            raise AuditLogUnavailable(f"could not {verb} the audit log: it is closed")
        with _sqlite_mapped(f"{verb} the SQLite audit log {self._path}"):
            return await self._db.run(step)


def _create_table(connection: sqlite3.Connection, read_only: bool) -> None:
    if not read_only:  # a read-only connection reads what exists
        connection.execute(_SCHEMA)


def _entry_from_row(row: _Row) -> AuditEntry:
    rowid, at, actor, action, key_id, tenant, detail = row
    when = parse_time(at)
    assert when is not None  # the column is NOT NULL
    return AuditEntry(when, actor, action, key_id, tenant, json.loads(detail), str(rowid))


def _sqlite_mapped(action: str) -> AbstractContextManager[None]:
    return mapped_errors(action, AuditLogUnavailable, AuditLogError)
