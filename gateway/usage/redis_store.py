"""Token usage in Redis, shared by every gateway replica.

    {prefix}:usage:principal:{principal}   hash: the principal's counts
    {prefix}:usage:tenant:{tenant}         hash: the tenant's counts, all principals summed
    {prefix}:usage:principal-tenant        hash: principal -> the tenant it last counted under

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

A batch is one MULTI/EXEC of HINCRBYs into both hashes of every row: Redis runs
all of it, or none when the connection fails before EXEC. The client sends a
batch once and never retries it by itself: a retried EXEC whose first reply was
lost would count twice. (The recorder's retry at its next interval has that one
blind spot too: a timeout after Redis ran the EXEC.) Redis does not roll back a
command it refuses at run time (a value of another type written under the prefix
by something else, an overflow past 2**63): `add` raises `UsageStoreError` then,
and the rest of the batch stands. Durability is Redis's: run it with AOF on.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import date

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ReadOnlyError, RedisError, ResponseError

from gateway.usage.records import UsageCounts, UsageKey
from gateway.usage.store import (
    UsageStoreError,
    UsageStoreUnavailable,
    day_bounds,
    totals_per_model,
)

_COUNTERS = ("requests", "prompt_tokens", "completion_tokens", "estimated_requests")
_DAY_LENGTH = len("2025-01-31")
UNKNOWN_TENANT = "(unknown)"


class RedisUsageStore:
    """A `UsageStore` in Redis hashes, shared by every replica that uses the same `prefix`.

    The client is the caller's unless the store made it (`connect`): `close`
    closes only a client the store owns.
    """

    def __init__(self, client: Redis, *, prefix: str = "vgw", owns_client: bool = False) -> None:
        self._client = client
        self._prefix = prefix
        self._owns_client = owns_client

    async def add(self, batch: Mapping[UsageKey, UsageCounts]) -> None:
        if not batch:
            return
        with _mapped(f"add {len(batch)} usage rows"):
            async with self._client.pipeline(transaction=True) as pipe:
                for key, counts in batch.items():
                    hashes = (self._principal_key(key.principal), self._tenant_key(key.tenant))
                    pipe.hset(self._tenants_key, key.principal, key.tenant)
                    values = (
                        counts.requests,
                        counts.prompt_tokens,
                        counts.completion_tokens,
                        counts.estimated_requests,
                    )
                    for counter, value in zip(_COUNTERS, values, strict=True):
                        if not value and counter == "estimated_requests":
                            continue
                        field = _field(key.day, key.model, counter)
                        for name in hashes:
                            pipe.hincrby(name, field, value)
                await pipe.execute()

    async def by_principal(
        self, principal: str, since: date | None = None, until: date | None = None
    ) -> dict[str, UsageCounts]:
        return await self._totals(self._principal_key(principal), since, until)

    async def by_tenant(
        self, tenant: str, since: date | None = None, until: date | None = None
    ) -> dict[str, UsageCounts]:
        return await self._totals(self._tenant_key(tenant), since, until)

    async def rows(self) -> list[tuple[UsageKey, UsageCounts]]:
        """Every principal's rows, for an export; the tenant as `add` last recorded it."""
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
