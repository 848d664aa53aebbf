"""The admin audit log in a Redis stream, shared by every gateway replica.

Kept apart from `gateway.admin.audit` so that a gateway without Redis never
imports the Redis client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.admin.audit import (
    AuditEntry,
    AuditLogUnavailable,
    AuditPage,
    check_page,
    parse_cursor,
)
from gateway.keys.records import format_time, parse_time


class RedisAuditLog:
    """An `AuditLog` in a Redis stream, `<prefix>:admin:audit`, never trimmed.

    Stream ids are the cursors; every gateway replica appends to the same stream.
    """

    def __init__(self, client: Redis, *, prefix: str = "vgw", owns_client: bool = False) -> None:
        self._client = client
        self._stream = f"{prefix}:admin:audit"
        self._owns_client = owns_client

    @classmethod
    def connect(cls, url: str, *, prefix: str = "vgw", timeout_s: float = 2.0) -> RedisAuditLog:
        """A log with its own client for `url`; `close` closes the client."""
        client = Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        return cls(client, prefix=prefix, owns_client=True)

    async def append(self, entry: AuditEntry) -> AuditEntry:
        fields: dict[str, str] = {
            "at": format_time(entry.at),
            "actor": entry.actor,
            "action": entry.action,
            "key_id": entry.key_id or "",
            "tenant": entry.tenant or "",
            "detail": json.dumps(dict(entry.detail), sort_keys=True),
        }
        with _redis_mapped("append to"):
            stream_id = await self._client.xadd(self._stream, fields)  # type: ignore[arg-type]
        return replace(entry, id=_text(stream_id), detail=dict(entry.detail))

    async def list(self, *, limit: int = 100, cursor: str | None = None) -> AuditPage:
        check_page(limit)
        newest = "+"
        if cursor is not None:
            position = parse_cursor(cursor)
            if position == (0, 0):
                return [], None  # nothing is older, and Redis refuses "(0-0"
            newest = "({}-{}".format(*position)
        with _redis_mapped("read"):
            raw = await self._client.xrevrange(self._stream, newest, "-", count=limit + 1)
        rows = cast(list[tuple[bytes, dict[bytes, bytes]]], raw)
        page = [_entry_from_stream(stream_id, fields) for stream_id, fields in rows[:limit]]
        return page, (page[-1].id if len(rows) > limit else None)

    async def close(self) -> None:
        if self._owns_client:
            self._owns_client = False
            await self._client.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry_from_stream(stream_id: bytes, raw: Mapping[bytes, bytes]) -> AuditEntry:
    fields = {_text(name): _text(value) for name, value in raw.items()}
    when = parse_time(fields["at"])
    assert when is not None  # every entry is written with `at`
    return AuditEntry(
        at=when,
        actor=fields["actor"],
        action=fields["action"],
        key_id=fields["key_id"] or None,
        tenant=fields["tenant"] or None,
        detail=json.loads(fields["detail"]),
        id=_text(stream_id),
    )


@contextmanager
def _redis_mapped(verb: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise AuditLogUnavailable(f"could not {verb} the Redis audit log: {exc}") from exc
