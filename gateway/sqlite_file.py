"""One SQLite connection, used from worker threads: the plumbing both SQLite stores share.

The gateway's SQLite files (API keys, usage, the admin audit log) are opened in
WAL mode with full syncs, and every statement runs in a worker thread so the
event loop never waits on the disk. They hold tenants' data: the file, its
`-wal` and `-shm` are 0600 and a directory the gateway creates is 0700. A
thread lock, not an asyncio one, guards the connection: a cancelled await must
not free it while the thread still runs.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from gateway.private_files import create_private, private_directory, tighten

T = TypeVar("T")
BUSY_TIMEOUT_S = 5.0
WAL_RETRY_S = 0.01


def connect(
    path: Path, read_only: bool, prepare: Callable[[sqlite3.Connection, bool], None]
) -> sqlite3.Connection:
    """Open PATH (WAL, synchronous=FULL); PREPARE(connection, read_only) sees to the schema."""
    if not read_only:
        private_directory(path.parent)
        # Created here, 0600, so SQLite opens our file and gives -wal and -shm its mode.
        create_private(path)
    target = path.resolve().as_uri() + ("?mode=ro" if read_only else "")
    connection = sqlite3.connect(
        target, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    try:
        if not read_only:
            _use_wal(connection)
        connection.execute("PRAGMA synchronous = FULL")
        prepare(connection, read_only)
        if not read_only:
            for suffix in ("-wal", "-shm"):  # left by an older gateway with a wider mode
                tighten(path.with_name(path.name + suffix))
    except BaseException:
        connection.close()
        raise
    return connection


def _use_wal(connection: sqlite3.Connection) -> None:
    """Switch to WAL. Gateways opening one new file together race to switch it, and
    SQLite answers the losers "locked" at once, without its busy timeout: they try
    again (a worker thread, so sleeping blocks no event loop) for as long as that
    timeout would have waited."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY  # SQLITE_BUSY_*, too
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(WAL_RETRY_S)


@contextmanager
def mapped_errors(
    action: str, unavailable: type[Exception], failed: type[Exception]
) -> Iterator[None]:
    """sqlite3's errors as the caller's: OperationalError (read-only, full, locked) and
    OSError are UNAVAILABLE, anything else FAILED; the message says what was being done."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        hint = ""
        if exc.sqlite_errorname.startswith("SQLITE_READONLY"):
            hint = " (the file or its directory is read-only to the gateway)"
        raise unavailable(f"could not {action}: {exc}{hint}") from exc
    except sqlite3.Error as exc:
        raise failed(f"could not {action}: {exc}") from exc
    except OSError as exc:  # creating the file or its directory
        raise unavailable(f"could not {action}: {exc}") from exc


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, taken at once (BEGIN IMMEDIATE) so it never fails half-way
    on a lock upgrade."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.in_transaction:  # SQLite may have rolled back already, e.g. on a full disk
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class ThreadedConnection:
    """Runs steps on one connection in worker threads, one at a time, until closed."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection
        self._lock = threading.Lock()
        self.closed = False

    async def run(self, step: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._locked, step)

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await asyncio.to_thread(self._locked, sqlite3.Connection.close)

    def _locked(self, step: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return step(self._db)
