"""The version of what the gateway keeps in Redis under its prefix: keys, usage, audit log.

    {prefix}:layout   string: the layout version, an integer

Stores written before the version existed have no such key and hold layout 1,
the first one. On open the key store stamps it, runs each migration from the
stored version up to this gateway's, and refuses a newer version: a gateway
must never read a layout it does not know as if it were its own. Each
migration is idempotent, so a start that stopped half-way may run it again, and
the version moves by compare-and-set, so gateways starting together move it once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from redis.asyncio import Redis

LAYOUT_VERSION = 1

# Version n -> the idempotent step that turns layout n into layout n + 1.
Migration = Callable[[Redis, str], Awaitable[None]]
MIGRATIONS: Mapping[int, Migration] = {}

# Moves the version from ARGV[1] to ARGV[2], only if no other gateway did meanwhile.
_ADVANCE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) end
return redis.call('GET', KEYS[1])
"""


class NewerLayout(Exception):
    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"the Redis store has layout version {found}, written by a newer gateway; this"
            f" gateway knows version {known}: upgrade it, or restore a backup of version {known}"
        )


async def settle_layout(
    client: Redis,
    prefix: str,
    *,
    current: int = LAYOUT_VERSION,
    migrations: Mapping[int, Migration] = MIGRATIONS,
) -> int:
    """Stamp an unversioned store, migrate an older one; `NewerLayout` for a newer one.

    Returns the version the store holds now. `ValueError` for a version that is
    not an integer (something else wrote the key).
    """
    key = f"{prefix}:layout"
    await client.set(key, 1, nx=True)  # unversioned: the first layout
    version = _version(await client.get(key))
    while version < current:
        await migrations[version](client, prefix)
        moved = await client.eval(_ADVANCE, 1, key, str(version), str(version + 1))
        version = _version(moved)
    if version > current:
        raise NewerLayout(version, current)
    return version


def _version(raw: object) -> int:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    if not text.isdecimal():
        raise ValueError(f"the Redis layout version is not an integer: {text[:20]!r}")
    return int(text)
