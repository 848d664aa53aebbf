"""The export file: JSON Lines, a header first and a count of every kind last.

    {"format": "vllm-gateway-store", "version": 2, "pepper_fingerprint": "…", …}
    {"kind": "tenant", "record": {…}}         one per stored tenant (version 2 on)
    {"kind": "key", "record": {…}}            one per key: hashes and metadata, no secret
    {"kind": "usage", "principal": …, …}      one per principal, tenant, model and day
    {"kind": "audit", "at": …, …}             oldest first
    {"kind": "end", "tenants": 1, "keys": 3, "usage": 12, "audit": 7}

The header names the pepper by its fingerprint (gateway/keys/format.py), so an
import under another pepper, whose keys could never verify, is refused before
anything is written. The last line makes a truncated file an error, not a
smaller store. A reader refuses a version it does not know, and reads a version 1
file (written before tenants were stored) as one with no tenants.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime

from gateway.admin.audit import AuditEntry
from gateway.keys.records import (
    KeyRecord,
    format_time,
    parse_time,
    record_from_json,
    record_to_json,
)
from gateway.tenants import records as tenants
from gateway.tenants.records import TenantRecord
from gateway.usage.records import UsageCounts, UsageKey

FORMAT = "vllm-gateway-store"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_COUNTERS = ("requests", "prompt_tokens", "completion_tokens", "estimated_requests")

UsageRow = tuple[UsageKey, UsageCounts]


class TransferError(Exception):
    """An export or import that cannot go on; the message is fit to show an operator."""


@dataclass(frozen=True, slots=True)
class Header:
    pepper_fingerprint: str
    exported_at: datetime
    source: str  # the backend the file came from: sqlite or redis
    gateway_version: str
    version: int = FORMAT_VERSION


@dataclass(slots=True)
class StoreDump:
    """Everything a store holds, in the order it is written: keys by id, audit oldest first."""

    keys: list[KeyRecord] = field(default_factory=list)
    tenants: list[TenantRecord] = field(default_factory=list)
    usage: list[UsageRow] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "tenants": len(self.tenants),
            "keys": len(self.keys),
            "usage": len(self.usage),
            "audit": len(self.audit),
        }


def dump_lines(header: Header, dump: StoreDump) -> Iterator[str]:
    """The file's lines, each one JSON document with its newline."""
    yield _line(
        {
            "format": FORMAT,
            "version": header.version,
            "pepper_fingerprint": header.pepper_fingerprint,
            "exported_at": format_time(header.exported_at),
            "source": header.source,
            "gateway_version": header.gateway_version,
        }
    )
    for tenant in dump.tenants:
        yield _line({"kind": "tenant", "record": json.loads(tenants.record_to_json(tenant))})
    for record in dump.keys:
        yield _line({"kind": "key", "record": json.loads(record_to_json(record))})
    for key, counts in dump.usage:
        row: dict[str, object] = {
            "kind": "usage",
            "principal": key.principal,
            "tenant": key.tenant,
            "model": key.model,
            "day": key.day.isoformat(),
        }
        yield _line(row | {name: getattr(counts, name) for name in _COUNTERS})
    for entry in dump.audit:
        yield _line(_audit_doc(entry))
    yield _line({"kind": "end", **dump.counts()})


def read_header(first_line: str) -> Header:
    """The header, or `TransferError` for a file of another format or version."""
    doc = _object(first_line, 1)
    if doc.get("format") != FORMAT:
        raise TransferError("this is not a vllm-gateway export: its first line has no header")
    version = doc.get("version")
    if version not in READABLE_VERSIONS:
        raise TransferError(
            f"the file has format version {version!r}; this gateway reads version"
            f" {FORMAT_VERSION}: import it with the gateway version that exported it"
            " (or a newer one)"
        )
    try:
        exported_at = datetime.fromisoformat(_str(doc, "exported_at"))
        return Header(
            pepper_fingerprint=_str(doc, "pepper_fingerprint"),
            exported_at=exported_at,
            source=_str(doc, "source"),
            gateway_version=_str(doc, "gateway_version"),
        )
    except ValueError as exc:
        raise TransferError(f"the file's header is invalid: {exc}") from exc


def read_body(lines: list[str]) -> StoreDump:
    """The records after the header (`lines` excludes it); `TransferError` names the line."""
    dump = StoreDump()
    for number, text in enumerate(lines, start=2):
        doc = _object(text, number)
        kind = doc.get("kind")
        try:
            if kind == "tenant":
                dump.tenants.append(tenants.record_from_json(json.dumps(doc.get("record"))))
            elif kind == "key":
                dump.keys.append(record_from_json(json.dumps(doc.get("record"))))
            elif kind == "usage":
                dump.usage.append(_usage_row(doc))
            elif kind == "audit":
                dump.audit.append(_audit_entry(doc))
            elif kind == "end":
                _check_end(doc, dump, number == len(lines) + 1)
                return dump
            else:
                raise ValueError(f"unknown kind {kind!r}")
        except (ValueError, TypeError, KeyError) as exc:
            raise TransferError(f"line {number} of the file is invalid: {exc}") from exc
    raise TransferError("the file is truncated: it has no end line (export it again)")


def _check_end(doc: dict[str, object], dump: StoreDump, last: bool) -> None:
    # A version 1 file counts no tenants.
    expected = {name: doc.get(name, 0 if name == "tenants" else None) for name in dump.counts()}
    if expected != dump.counts() or not last:
        raise ValueError(f"the end line counts {expected}, the file holds {dump.counts()}")


def _line(doc: dict[str, object]) -> str:
    return json.dumps(doc, sort_keys=True, ensure_ascii=False) + "\n"


def _object(text: str, number: int) -> dict[str, object]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TransferError(f"line {number} of the file is not JSON: {exc.msg}") from exc
    if not isinstance(doc, dict):
        raise TransferError(f"line {number} of the file is not a JSON object")
    return doc


def _str(doc: dict[str, object], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str):
        raise ValueError(f"{name} is not a string")
    return value


def _usage_row(doc: dict[str, object]) -> UsageRow:
    values = {name: doc.get(name) for name in _COUNTERS}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values.values()):
        raise ValueError("usage counts are whole numbers")
    texts = [_str(doc, name) for name in ("principal", "tenant", "model", "day")]
    principal, tenant, model, day = texts
    counts = UsageCounts(**{name: int(str(value)) for name, value in values.items()})
    return UsageKey(principal, tenant, model, date.fromisoformat(day)), counts


def _audit_doc(entry: AuditEntry) -> dict[str, object]:
    return {
        "kind": "audit",
        "at": format_time(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "key_id": entry.key_id,
        "tenant": entry.tenant,
        "detail": dict(entry.detail),
    }


def _audit_entry(doc: dict[str, object]) -> AuditEntry:
    at = parse_time(_str(doc, "at"))
    detail = doc.get("detail")
    if at is None or not isinstance(detail, dict):
        raise ValueError("an audit entry needs `at` and a `detail` object")
    key_id, tenant = doc.get("key_id"), doc.get("tenant")
    return AuditEntry(
        at=at,
        actor=_str(doc, "actor"),
        action=_str(doc, "action"),
        key_id=key_id if isinstance(key_id, str) else None,
        tenant=tenant if isinstance(tenant, str) else None,
        detail={str(k): str(v) for k, v in detail.items()},
    )
