"""The tenant directory on its own: the table the request path reads, the store laid
over the settings, the poll that keeps replicas in step, and what an unreadable
store leaves in force. The gateway-level tests (tests/test_tenants_*.py) show the
same through the admin API and two gateways on one Redis.

The store is the in-memory `TenantStore` (and, for the poll, a real SQLite file);
`Flaky` adds a switch that makes it unreadable, the one fault the directory handles.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from gateway.principal import Limits, Principal, Quotas
from gateway.tenants.directory import LOG_EVERY_S, TenantDirectory, TenantTable
from gateway.tenants.records import TenantRecord
from gateway.tenants.sqlite_store import SqliteTenantStore
from gateway.tenants.store import MemoryTenantStore, TenantStoreUnavailable

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Flaky(MemoryTenantStore):
    """The in-memory store, unreadable while `down`."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def version(self) -> int:
        if self.down:
            raise TenantStoreUnavailable("the tenant store is down")
        return await super().version()


class Clock:
    """A monotonic clock that starts at 0, as a fresh host's may."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


SEEDS = {
    "acme": TenantRecord("acme", Limits(requests_per_minute=10), source="settings"),
    "globex": TenantRecord("globex", Limits(max_tokens=64), source="settings"),
}


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not within the wait"
        await asyncio.sleep(0.005)


def test_the_table_holds_only_what_each_tenant_sets() -> None:
    records = {
        "plain": TenantRecord("plain"),
        "capped": TenantRecord(
            "capped",
            Limits(max_tokens=128, max_batch=4, quotas=Quotas(tokens_per_day=1000)),
            models=frozenset({"small"}),
        ),
        "walled": TenantRecord("walled", models=frozenset()),
    }
    table = TenantTable.of(records)
    assert table.records == records and table.records is not records
    with pytest.raises(FrozenInstanceError):
        table.limits = {}  # type: ignore[misc]  # a table is replaced whole, never edited
    assert table.limits == {name: record.limits for name, record in records.items()}
    assert table.quotas == {"capped": Quotas(tokens_per_day=1000)}
    assert table.max_tokens == {"capped": 128}
    assert table.max_batch == {"capped": 4}
    # No models allowed at all is a restriction too, unlike "every model" (None).
    assert table.models == {"capped": frozenset({"small"}), "walled": frozenset()}


async def test_the_settings_apply_before_any_store_and_the_views_follow_the_table() -> None:
    directory = TenantDirectory(SEEDS)
    assert list(directory.table.records) == ["acme", "globex"]
    assert directory.limits["acme"] == Limits(requests_per_minute=10)
    assert directory.max_tokens.get("globex") == 64
    assert directory.max_tokens.get("acme") is None
    assert directory.max_tokens.get("acme", 7) == 7
    assert list(directory.limits) == ["acme", "globex"] and len(directory.limits) == 2
    assert len(directory.quotas) == 0 and len(directory.max_batch) == 0
    with pytest.raises(KeyError):
        directory.max_batch["acme"]
    await directory.refresh()  # no store yet: nothing to read, nothing raised
    store = MemoryTenantStore()
    await store.create(TenantRecord("acme", Limits(max_batch=2, quotas=Quotas(requests_per_day=5))))
    await directory.open(store)
    try:
        # The same view objects show the new table.
        assert directory.max_batch["acme"] == 2
        assert directory.quotas["acme"] == Quotas(requests_per_day=5)
        assert directory.limits["acme"] == Limits(max_batch=2, quotas=Quotas(requests_per_day=5))
    finally:
        await directory.close()


async def test_a_stored_tenant_wins_by_name_and_the_table_is_sorted() -> None:
    store = MemoryTenantStore()
    await store.create(TenantRecord("zeta", Limits(requests_per_minute=1)))
    await store.create(TenantRecord("acme", Limits(requests_per_minute=99)))
    directory = TenantDirectory(SEEDS)
    await directory.open(store)
    try:
        assert list(directory.table.records) == ["acme", "globex", "zeta"]
        assert directory.table.records["acme"].source == "store"
        assert directory.limits["acme"] == Limits(requests_per_minute=99)
        assert directory.table.records["globex"] == SEEDS["globex"]
        await store.delete("acme")
        await directory.refresh()
        assert directory.table.records["acme"] == SEEDS["acme"]  # the settings again
    finally:
        await directory.close()


class CountedSqlite(SqliteTenantStore):
    """The SQLite store, counting its full reads."""

    reads = 0

    async def all(self) -> list[TenantRecord]:
        self.reads += 1
        return await super().all()


async def test_the_store_is_read_in_full_only_when_its_version_moved(tmp_path: Path) -> None:
    store = await CountedSqlite.open(tmp_path / "tenants.db")
    directory = TenantDirectory({}, poll_interval_s=3600)
    await directory.open(store)
    try:
        assert store.reads == 1
        await directory.refresh()
        await directory.refresh()
        assert store.reads == 1
        await store.create(TenantRecord("new"))
        await directory.refresh()
        assert store.reads == 2 and "new" in directory.table.records
        # Versions are compared by value, also past the integers Python keeps one of.
        for _ in range(300):
            await store.replace(TenantRecord("new"))
        await directory.refresh()
        await directory.refresh()
        assert store.reads == 3
    finally:
        await directory.close()
        await store.close()


async def test_a_change_reaches_the_table_within_a_poll_and_none_after_close(
    tmp_path: Path,
) -> None:
    # Two store objects on one SQLite file: a change made through the other one, as by
    # another process, is seen only by polling.
    path = tmp_path / "tenants.db"
    mine, theirs = await SqliteTenantStore.open(path), await SqliteTenantStore.open(path)
    directory = TenantDirectory(SEEDS, poll_interval_s=0.01)
    await directory.open(mine)
    try:
        await theirs.create(TenantRecord("initech", models=frozenset({"small"})))
        await eventually(lambda: "initech" in directory.table.records)
        assert directory.table.models["initech"] == frozenset({"small"})
        await directory.close()
        await theirs.create(TenantRecord("hooli"))
        await asyncio.sleep(0.1)
        assert "hooli" not in directory.table.records
    finally:
        await directory.close()
        await mine.close()
        await theirs.close()


async def test_an_unreadable_store_leaves_the_last_table_and_is_logged_every_30_s(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, clock = Flaky(), Clock()
    await store.create(TenantRecord("acme", Limits(requests_per_minute=5)))
    directory = TenantDirectory(SEEDS, poll_interval_s=0.005, clock=clock)
    await directory.open(store)
    try:
        store.down = True
        with caplog.at_level(logging.WARNING, logger="gateway.tenants"):
            await asyncio.sleep(0.1)  # many failed polls at one instant
            assert len(caplog.records) == 1
            assert "the last tenants stay" in caplog.records[0].getMessage()
            clock.now += LOG_EVERY_S - 1
            await asyncio.sleep(0.05)
            assert len(caplog.records) == 1
            clock.now += 1
            await eventually(lambda: len(caplog.records) == 2)
        assert directory.limits["acme"] == Limits(requests_per_minute=5)
        # Readable again: the next change applies.
        store.down = False
        await store.replace(TenantRecord("acme", Limits(requests_per_minute=6)))
        await eventually(lambda: directory.limits["acme"] == Limits(requests_per_minute=6))
    finally:
        await directory.close()


async def test_a_store_down_at_start_leaves_the_settings_until_it_answers() -> None:
    store = Flaky()
    await store.create(TenantRecord("acme", Limits(requests_per_minute=5)))
    store.down = True
    directory = TenantDirectory(SEEDS, poll_interval_s=0.005)
    await directory.open(store)  # does not raise
    try:
        assert directory.table.records["acme"] == SEEDS["acme"]
        store.down = False
        await eventually(lambda: directory.limits["acme"] == Limits(requests_per_minute=5))
    finally:
        await directory.close()


def test_a_principal_is_restricted_to_its_tenants_models_as_well_as_its_own() -> None:
    directory = TenantDirectory(
        {
            "open": TenantRecord("open"),
            "walled": TenantRecord("walled", models=frozenset({"small", "large"})),
        }
    )
    anyone = Principal("k1", "open", "key", models=frozenset({"small"}))
    assert directory.restrict(anyone) is anyone
    unknown = Principal("k2", "elsewhere", "key")
    assert directory.restrict(unknown) is unknown
    every = Principal("k3", "walled", "key")
    assert directory.restrict(every).models == frozenset({"small", "large"})
    some = Principal("k4", "walled", "jwt", models=frozenset({"large", "other"}))
    restricted = directory.restrict(some)
    assert restricted.models == frozenset({"large"})
    assert (restricted.id, restricted.tenant, restricted.kind) == ("k4", "walled", "jwt")
