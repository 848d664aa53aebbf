"""Reading everything out of a store, and writing it into an empty one.

An import fills an empty store only: it refuses a store that holds any key,
usage row, tenant or audit entry. That is what makes it idempotent: usage is a sum,
and a second import into the same store is refused instead of counting every
token twice. Keys keep their ids, hashes, tenant, limits, revocation, expiry,
rotation grace and `last_used_at`; usage rows keep their principal, tenant,
model and day; audit entries keep their time, actor and details, and get new
ids from the target log; tenants keep everything, which then records the import itself.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from gateway.admin.audit import AuditEntry, AuditLog
from gateway.keys.format import pepper_fingerprint
from gateway.keys.records import KeyRecord
from gateway.keys.store import MAX_PAGE, KeyStore
from gateway.transfer.jsonl import Header, StoreDump, TransferError
from gateway.transfer.stores import Stores
from gateway.usage.records import UsageCounts, UsageKey

IMPORT_ACTOR = "cli:import"


async def export_store(
    stores: Stores, pepper: bytes, *, source: str, version: str
) -> tuple[Header, StoreDump]:
    """Everything `stores` hold, and a header naming `pepper` by its fingerprint.

    The store holds no secret to check the pepper against: it must be the one the
    store's gateways use, or the file carries the wrong name for its hashes.
    """
    dump = StoreDump(
        keys=await _all_keys(stores.keys),
        tenants=await stores.tenants.all(),
        usage=await stores.usage.rows(),
        audit=await _all_audit(stores.audit),
    )
    # A key's tenant is in its record for good; the usage store may not know it (Redis).
    tenants = {record.id: record.tenant for record in dump.keys}
    dump.usage = [
        (replace(key, tenant=tenants.get(key.principal, key.tenant)), counts)
        for key, counts in dump.usage
    ]
    header = Header(pepper_fingerprint(pepper), datetime.now(UTC), source, version)
    return header, dump


def check_pepper(header: Header, pepper: bytes) -> None:
    """`TransferError` unless the file was exported under `pepper`: its keys would never verify."""
    ours = pepper_fingerprint(pepper)
    if header.pepper_fingerprint != ours:
        raise TransferError(
            f"the file was exported under another pepper (fingerprint"
            f" {header.pepper_fingerprint}; the configured auth.pepper has {ours}): none of its"
            " keys would verify. Configure the pepper of the store it came from; nothing was"
            " imported"
        )


async def import_store(stores: Stores, header: Header, dump: StoreDump) -> None:
    """Write `dump` into `stores`, which must be empty; `TransferError` if they are not."""
    await _check_empty(stores)
    for tenant in dump.tenants:
        await stores.tenants.create(tenant)
    for record in dump.keys:
        await stores.keys.create(record)
    batch: dict[UsageKey, UsageCounts] = {}
    for key, counts in dump.usage:
        batch.setdefault(key, UsageCounts()).add(counts)
    await stores.usage.add(batch)  # all or nothing
    for entry in dump.audit:
        await stores.audit.append(entry)
    detail = {name: str(count) for name, count in dump.counts().items()}
    detail |= {"source": header.source, "exported_at": header.exported_at.isoformat()}
    await stores.audit.append(
        AuditEntry(at=datetime.now(UTC), actor=IMPORT_ACTOR, action="store.import", detail=detail)
    )


async def _check_empty(stores: Stores) -> None:
    held = []
    if await stores.tenants.all():
        held.append("tenants")
    if (await stores.keys.list(limit=1))[0]:
        held.append("keys")
    if await stores.usage.rows():
        held.append("usage")
    if (await stores.audit.list(limit=1))[0]:
        held.append("audit entries")
    if held:
        raise TransferError(
            f"{stores.description} is not empty (it holds {', '.join(held)}): an import fills an"
            " empty store only, so that importing twice can never count usage twice. Point the"
            " settings at a new SQLite path or an empty Redis database; nothing was imported"
        )


async def _all_keys(store: KeyStore) -> list[KeyRecord]:
    records, cursor = await store.list(limit=MAX_PAGE)
    while cursor is not None:
        page, cursor = await store.list(limit=MAX_PAGE, cursor=cursor)
        records += page
    return records


async def _all_audit(log: AuditLog) -> list[AuditEntry]:
    entries, cursor = await log.list(limit=1000)
    while cursor is not None:
        page, cursor = await log.list(limit=1000, cursor=cursor)
        entries += page
    return entries[::-1]  # oldest first: the order an import appends them in
