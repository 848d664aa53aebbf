"""Token usage in SQLite: a table in the key store's file, on one node.

One row per principal, tenant, model and UTC day (ISO text, so it sorts as a
date). A batch is one `BEGIN IMMEDIATE` transaction of upserts: every row is
added or, on any error, none. The primary key serves reads by principal, an
index reads by tenant. The table is created if missing and never touches the
key store's `user_version`, so either may open a fresh file first; a table from
before `estimated_requests` gets the column (0 for the rows it had).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import date
from pathlib import Path
from typing import Literal, TypeVar

from gateway.sqlite_file import ThreadedConnection, connect, mapped_errors, transaction
from gateway.usage.records import BatchId, UsageCounts, UsageKey
from gateway.usage.store import (
    UsageStoreError,
    UsageStoreUnavailable,
    day_bounds,
    totals_per_model,
)

T = TypeVar("T")

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS token_usage (
        principal TEXT NOT NULL,
        day TEXT NOT NULL,
        model TEXT NOT NULL,
        tenant TEXT NOT NULL,
        requests INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        estimated_requests INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (principal, day, model, tenant)
    ) STRICT, WITHOUT ROWID
    """,
    "CREATE INDEX IF NOT EXISTS token_usage_by_tenant ON token_usage (tenant, day)",
)
_UPSERT = """
    INSERT INTO token_usage
        (principal, day, model, tenant, requests, prompt_tokens, completion_tokens,
         estimated_requests)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (principal, day, model, tenant) DO UPDATE SET
        requests = requests + excluded.requests,
        prompt_tokens = prompt_tokens + excluded.prompt_tokens,
        completion_tokens = completion_tokens + excluded.completion_tokens,
        estimated_requests = estimated_requests + excluded.estimated_requests
"""
_ADD_ESTIMATED = "ALTER TABLE token_usage ADD COLUMN estimated_requests INTEGER NOT NULL DEFAULT 0"
# Two fixed queries, so nothing but values is ever formatted into SQL.
_TOTALS = {
    column: f"""
    SELECT model, SUM(requests), SUM(prompt_tokens), SUM(completion_tokens),
        SUM(estimated_requests)
    FROM token_usage WHERE {column} = ? AND day BETWEEN ? AND ? GROUP BY model
    """  # noqa: S608
    for column in ("principal", "tenant")
}
_ALL_ROWS = """
    SELECT principal, day, model, tenant, requests, prompt_tokens, completion_tokens,
        estimated_requests
    FROM token_usage WHERE day BETWEEN ? AND ? ORDER BY principal, day, model, tenant
"""
_Row = tuple[str, str, str, str, int, int, int, int]


class SqliteUsageStore:
    """A `UsageStore` in a SQLite table (WAL). Build it with `await SqliteUsageStore.open(path)`.

    The file may be the key store's and the audit log's: the table is separate
    and so is the connection.
    """

    def __init__(self, connection: sqlite3.Connection, path: str) -> None:
        self._db = ThreadedConnection(connection)
        self._path = path

    @classmethod
    async def open(cls, path: str | Path, *, read_only: bool = False) -> SqliteUsageStore:
        """Open (and on first use create) the table; `read_only` opens the file `mode=ro`."""
        with _mapped(f"open the SQLite usage store {path}"):
            connection = await asyncio.to_thread(connect, Path(path), read_only, _create_table)
        return cls(connection, str(path))

    async def add(
        self, batch: Mapping[UsageKey, UsageCounts], batch_id: BatchId | None = None
    ) -> None:
        # A commit that raised did not apply, so `batch_id` needs no record here.
        rows = [_row(key, counts) for key, counts in batch.items()]
        if rows:
            await self._run(f"add {len(rows)} usage rows to", lambda db: _upsert(db, rows))

    async def by_principal(
        self, principal: str, since: date | None = None, until: date | None = None
    ) -> dict[str, UsageCounts]:
        return await self._totals("principal", principal, since, until)

    async def by_tenant(
        self, tenant: str, since: date | None = None, until: date | None = None
    ) -> dict[str, UsageCounts]:
        return await self._totals("tenant", tenant, since, until)

    async def rows(
        self, since: date | None = None, until: date | None = None
    ) -> list[tuple[UsageKey, UsageCounts]]:
        """Every stored row of the days in [since, until], as `add` would take it back."""
        first, last = day_bounds(since, until)
        days = (first.isoformat(), last.isoformat())

        def select(db: sqlite3.Connection) -> list[_Row]:
            return db.execute(_ALL_ROWS, days).fetchall()

        stored = await self._run("read every row of", select)
        return [(_key(row), UsageCounts(*row[4:])) for row in stored]

    async def close(self) -> None:
        await self._db.close()

    async def _totals(
        self,
        column: Literal["principal", "tenant"],
        value: str,
        since: date | None,
        until: date | None,
    ) -> dict[str, UsageCounts]:
        first, last = day_bounds(since, until)
        values = (value, first.isoformat(), last.isoformat())

        def select(db: sqlite3.Connection) -> list[tuple[str, int, int, int, int]]:
            return db.execute(_TOTALS[column], values).fetchall()

        rows = await self._run(f"read usage by {column} from", select)
        return totals_per_model((model, UsageCounts(*sums)) for model, *sums in rows)

    async def _run(self, action: str, step: Callable[[sqlite3.Connection], T]) -> T:
        if self._db.closed:
            raise UsageStoreUnavailable(f"could not {action} the usage store: it is closed")
        with _mapped(f"{action} the SQLite usage store {self._path}"):
            return await self._db.run(step)


def _mapped(action: str) -> AbstractContextManager[None]:
    return mapped_errors(action, UsageStoreUnavailable, UsageStoreError)


def _create_table(db: sqlite3.Connection, read_only: bool) -> None:
    if not read_only:  # a read-only connection reads what exists
        for statement in _SCHEMA:
            db.execute(statement)
        columns = {row[1] for row in db.execute("PRAGMA table_info(token_usage)")}
        if "estimated_requests" not in columns:
            db.execute(_ADD_ESTIMATED)


def _row(key: UsageKey, counts: UsageCounts) -> _Row:
    return (
        key.principal, key.day.isoformat(), key.model, key.tenant,
        counts.requests, counts.prompt_tokens, counts.completion_tokens,
        counts.estimated_requests,
    )  # fmt: skip


def _key(row: _Row) -> UsageKey:
    principal, day, model, tenant = row[:4]
    return UsageKey(principal, tenant, model, date.fromisoformat(day))


def _upsert(db: sqlite3.Connection, rows: list[_Row]) -> None:
    with transaction(db):
        db.executemany(_UPSERT, rows)
