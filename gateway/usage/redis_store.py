"""Token usage in Redis, shared by every gateway replica.

    {prefix}:usage:principal:{principal}   hash: the principal's counts
    {prefix}:usage:tenant:{tenant}         hash: the tenant's counts, all principals summed
    {prefix}:usage:principal-tenant        hash: principal -> the tenant it last counted under
    {prefix}:usage:writer:{writer}         the last batch sequence a recorder applied

Each hash holds up to four integer fields per UTC day and model:

    {day}|{model}|requests   {day}|{model}|prompt_tokens   {day}|{model}|completion_tokens
    {day}|{model}|estimated_requests   (only once a request's usage was estimated)

`{day}` is ISO (`2025-01-31`, always ten characters) and the counter name after
the last `|` never holds one, so a field splits back into day, model and counter
whatever the model name holds (`|`, `:`, any Unicode). A read is one HGETALL,
filtered by day here; a hash grows by three or four fields per model per active day.

The principal's tenant is kept for exports only (an API key's tenant is in its
record; a JWT subject's is known only from here); usage written before it was
kept exports a JWT subject under the tenant `(unknown)`.

A batch is one Lua script: Redis runs it whole, or not at all when the connection
fails before it arrives. It also notes each principal's tenant. Given a
`BatchId`, the script first compares the id with
the writer's last applied sequence and applies nothing when it is not newer: a
batch Redis ran whose answer was lost (the connection dropped after the write) is
not counted again when the recorder retries it. The writer's key expires after
`WRITER_TTL_S` without a batch; a retry later than that could count twice. The
client never retries by itself. A command Redis refuses (a value of another type
written under the prefix by something else, an overflow past 2**63) does not stop
the rest: those rows are skipped, the batch counts as applied, and `add` raises
`UsageStoreError` naming them. Durability is Redis's: run it with AOF on.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import date

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ReadOnlyError, RedisError, ResponseError

from gateway.usage.records import BatchId, UsageCounts, UsageKey
from gateway.usage.store import (
    UsageStoreError,
    UsageStoreUnavailable,
    day_bounds,
    totals_per_model,
)

_COUNTERS = ("requests", "prompt_tokens", "completion_tokens", "estimated_requests")
_DAY_LENGTH = len("2025-01-31")
UNKNOWN_TENANT = "(unknown)"
WRITER_TTL_S = 7 * 24 * 3600

# KEYS[1]: the writer's key, KEYS[2]: principal -> tenant, KEYS[3..]: the counters'
# hashes. ARGV[1]: the batch's sequence ('' for a batch without id), ARGV[2]: the
# writer key's lifetime, ARGV[3]: the number of (principal, tenant) pairs that
# follow, then one (hash index, field, increment) triple per counter. Returns the
# refusals.
_ADD = """
if ARGV[1] ~= '' then
  local last = tonumber(redis.call('GET', KEYS[1]) or '-1')
  if tonumber(ARGV[1]) <= last then return {} end
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
local refused = {}
local pairs_end = 3 + 2 * tonumber(ARGV[3])
for i = 4, pairs_end, 2 do
  local reply = redis.pcall('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  if type(reply) == 'table' and reply.err then
    refused[#refused + 1] = KEYS[2] .. ' ' .. ARGV[i] .. ': ' .. reply.err
  end
end
for i = pairs_end + 1, #ARGV, 3 do
  local reply = redis.pcall('HINCRBY', KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 2])
  if type(reply) == 'table' and reply.err then
    refused[#refused + 1] = KEYS[tonumber(ARGV[i])] .. ' ' .. ARGV[i + 1] .. ': ' .. reply.err
  end
end
return refused
"""


class RedisUsageStore:
    """A `UsageStore` in Redis hashes, shared by every replica that uses the same `prefix`.

    The client is the caller's unless the store made it (`connect`): `close`
    closes only a client the store owns.
    """

    def __init__(self, client: Redis, *, prefix: str = "vgw", owns_client: bool = False) -> None:
        self._client = client
        self._prefix = prefix
        self._owns_client = owns_client
        self._add = client.register_script(_ADD)

    async def add(
        self, batch: Mapping[UsageKey, UsageCounts], batch_id: BatchId | None = None
    ) -> None:
        if not batch:
            return
        hashes: dict[str, int] = {}  # name -> its index in KEYS
        tenants = {key.principal: key.tenant for key in batch}
        args: list[str | int] = ["" if batch_id is None else batch_id.sequence, WRITER_TTL_S]
        args += [len(tenants), *(value for pair in tenants.items() for value in pair)]
        for key, counts in batch.items():
            names = (self._principal_key(key.principal), self._tenant_key(key.tenant))
            for counter, value in _values(counts):
                field = _field(key.day, key.model, counter)
                for name in names:
                    args += [hashes.setdefault(name, len(hashes) + 3), field, value]
        writer = self._writer_key("" if batch_id is None else batch_id.writer)
        with _mapped(f"add {len(batch)} usage rows"):
            refused = await self._add(keys=[writer, self._tenants_key, *hashes], args=args)
        if refused:
            shown = "; ".join(_text(line) for line in refused[:3])
            raise UsageStoreError(f"Redis refused {len(refused)} usage counts: {shown}")

    async def by_principal(
        self, principal: str, since: date | None = None, until: date | None = None
    ) -> dict[str, UsageCounts]:
        return await self._totals(self._principal_key(principal), since, until)

    async def by_tenant(
        self, tenant: str, since: date | None = None, until: date | None = None
    ) -> dict[str, UsageCounts]:
        return await self._totals(self._tenant_key(tenant), since, until)

    async def rows(
        self, since: date | None = None, until: date | None = None
    ) -> list[tuple[UsageKey, UsageCounts]]:
        """Every principal's rows of the days in [since, until], for an export or a
        report; the tenant as `add` last recorded it."""
        first, last = (day.isoformat() for day in day_bounds(since, until))
        start = len(self._principal_key(""))
        with _mapped("read every usage row"):
            tenants = {
                _text(name): _text(tenant)
                for name, tenant in (await self._client.hgetall(self._tenants_key)).items()
            }
            pattern = self._principal_key("*")
            names = sorted({_text(name) async for name in self._client.scan_iter(pattern)})
            async with self._client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hgetall(name)
                hashes = await pipe.execute()
        found: dict[UsageKey, UsageCounts] = {}
        for name, fields in zip(names, hashes, strict=True):
            principal = name[start:]
            tenant = tenants.get(principal, UNKNOWN_TENANT)
            for raw, value in fields.items():
                day, model, counter = _parse_field(raw)
                if not first <= day <= last:  # ISO days sort as dates
                    continue
                key = UsageKey(principal, tenant, model, date.fromisoformat(day))
                found.setdefault(key, UsageCounts()).add(_counts(counter, value))
        return list(found.items())

    async def close(self) -> None:
        if self._owns_client:
            self._owns_client = False
            with _mapped("close the connection"):
                await self._client.aclose()

    async def _totals(
        self, name: str, since: date | None, until: date | None
    ) -> dict[str, UsageCounts]:
        with _mapped("read usage"):
            fields = await self._client.hgetall(name)
        first, last = day_bounds(since, until)
        first_day, last_day = first.isoformat(), last.isoformat()
        rows = []
        for raw, value in fields.items():
            day, model, counter = _parse_field(raw)
            if first_day <= day <= last_day:  # ISO days sort as dates
                rows.append((model, _counts(counter, value)))
        return totals_per_model(rows)

    @property
    def _tenants_key(self) -> str:
        return f"{self._prefix}:usage:principal-tenant"

    def _principal_key(self, principal: str) -> str:
        return f"{self._prefix}:usage:principal:{principal}"

    def _tenant_key(self, tenant: str) -> str:
        return f"{self._prefix}:usage:tenant:{tenant}"

    def _writer_key(self, writer: str) -> str:
        return f"{self._prefix}:usage:writer:{writer}"


def connect(url: str, *, prefix: str = "vgw", timeout_s: float = 2.0) -> RedisUsageStore:
    """A store with its own client: bounded timeouts, so an outage reaches the recorder
    as an error within seconds, and no retries, so a batch is never sent twice."""
    client = Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    return RedisUsageStore(client, prefix=prefix, owns_client=True)


def _values(counts: UsageCounts) -> Iterator[tuple[str, int]]:
    """The counters to add; `estimated_requests` only when there is one."""
    yield "requests", counts.requests
    yield "prompt_tokens", counts.prompt_tokens
    yield "completion_tokens", counts.completion_tokens
    if counts.estimated_requests:
        yield "estimated_requests", counts.estimated_requests


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _field(day: date, model: str, counter: str) -> str:
    return f"{day.isoformat()}|{model}|{counter}"


def _parse_field(raw: bytes | str) -> tuple[str, str, str]:
    """Day, model and counter of a hash field; `UsageStoreError` for a field not ours."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    day, rest = text[:_DAY_LENGTH], text[_DAY_LENGTH + 1 :]
    model, _, counter = rest.rpartition("|")
    if text[_DAY_LENGTH : _DAY_LENGTH + 1] != "|" or counter not in _COUNTERS:
        raise UsageStoreError(f"a stored usage field is invalid: {text!r}")
    try:
        date.fromisoformat(day)
    except ValueError as exc:
        raise UsageStoreError(f"a stored usage field is invalid: {text!r}") from exc
    return day, model, counter


def _counts(counter: str, raw: bytes | str) -> UsageCounts:
    try:
        value = int(raw)
    except ValueError as exc:
        raise UsageStoreError(f"a stored usage count is not an integer: {raw!r}") from exc
    return UsageCounts(**{counter: value})


@contextmanager
def _mapped(action: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        # Redis refusing a command is not an outage, unless it refuses writes altogether.
        refused = isinstance(exc, ResponseError) and not isinstance(exc, ReadOnlyError)
        error = UsageStoreError if refused else UsageStoreUnavailable
        raise error(f"could not {action} in the Redis usage store: {exc}") from exc
