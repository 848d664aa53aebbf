"""The export file's format, in process: what is written reads back equal, and what a
reader does not know is refused by line."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from gateway.admin.audit import AuditEntry
from gateway.keys.format import pepper_fingerprint
from gateway.keys.records import KeyChanges, new_key, new_secret
from gateway.principal import Limits, Rates
from gateway.transfer.jsonl import (
    Header,
    StoreDump,
    TransferError,
    dump_lines,
    read_body,
    read_header,
)
from gateway.usage.records import UsageCounts, UsageKey

PEPPER = b"pepper-for-the-file-format-tests-0123456789"
NOW = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _dump() -> StoreDump:
    _, plain = new_key(PEPPER, tenant="acme", name="plain", created_at=NOW)
    limits = Limits(requests_per_minute=5, max_tokens=64, models={"m": Rates(tokens_per_minute=9)})
    _, rich = new_key(
        PEPPER,
        tenant="beta/x",
        name="rich ✓",
        created_at=NOW,
        models=frozenset({"m", "n"}),
        limits=limits,
        expires_at=NOW + timedelta(days=3),
        metadata={"team": "a|b"},
    )
    _, rotation = new_secret(PEPPER, rich.id, grace_until=NOW + timedelta(hours=1))
    rich = KeyChanges(rotation=rotation, revoked_at=NOW).apply(rich)
    usage = [(UsageKey(plain.id, "acme", "m|x", date(2030, 1, 1)), UsageCounts(3, 10, 20, 1))]
    audit = [AuditEntry(NOW, "token:0", "key.create", plain.id, "acme", {"fields": "a,b"})]
    return StoreDump(keys=[plain, rich], usage=usage, audit=audit)


DUMP = _dump()  # once: every key of it is random


def _lines() -> list[str]:
    header = Header(pepper_fingerprint(PEPPER), NOW, "sqlite", "0.1.0")
    return "".join(dump_lines(header, DUMP)).splitlines()


def test_what_is_written_reads_back_equal() -> None:
    lines = _lines()
    header = read_header(lines[0])
    assert header == Header(pepper_fingerprint(PEPPER), NOW, "sqlite", "0.1.0")
    assert read_body(lines[1:]) == DUMP


def test_the_fingerprint_names_a_pepper_without_showing_it() -> None:
    fingerprint = pepper_fingerprint(PEPPER)
    assert len(fingerprint) == 16 and fingerprint == pepper_fingerprint(PEPPER)
    assert fingerprint != pepper_fingerprint(PEPPER + b"x")
    assert fingerprint not in PEPPER.decode() and PEPPER.decode() not in "\n".join(_lines())


@pytest.mark.parametrize(
    ("index", "line", "message"),
    [
        (1, '{"kind": "key", "record": {"id": "short"}}', "line 2 of the file is invalid"),
        (2, '{"kind": "usage", "requests": -1}', "line 3 of the file is invalid"),
        (3, '{"kind": "lease"}', "unknown kind 'lease'"),
        (4, '{"kind": "end", "keys": 9, "usage": 1, "audit": 1}', "the end line counts"),
        (4, "[]", "line 5 of the file is not a JSON object"),
    ],
)
def test_a_line_the_reader_does_not_know_is_refused(index: int, line: str, message: str) -> None:
    lines = _lines()
    lines[index] = line
    with pytest.raises(TransferError, match=message):
        read_body(lines[1:])
