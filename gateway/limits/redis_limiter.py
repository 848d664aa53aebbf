"""The shared limits backend: Redis, one atomic script per admission.

    {prefix}:rl:{bucket}:r    hash  second -> requests admitted in it
    {prefix}:rl:{bucket}:t    hash  second -> tokens charged to it
    {prefix}:rl:{bucket}:c    sorted set  lease id -> expiry (ms, Redis clock)

Every script reads Redis's own clock (`TIME`), so gateway replicas whose clocks
disagree still share one window. Leases are renewed by one script call per
interval for all of this process's running requests; a process that dies stops
renewing, and its leases expire within one TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from gateway.limits.limiter import (
    WINDOW_S,
    Demand,
    Grant,
    LimiterBackendError,
    Quota,
    Refusal,
    charges,
)

logger = logging.getLogger("gateway.limits")
# Each admission holds a connection for one round trip; more waiting callers queue.
MAX_CONNECTIONS = 64
KINDS = {1: "requests", 2: "tokens", 3: "concurrent_requests"}

# KEYS: three per bucket (requests, tokens, leases).
# ARGV: lease id, lease TTL (ms), then per bucket: rpm, tpm, concurrency (-1: none), token charge.
_ADMIT = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now_ms = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local oldest = sec - 59
local function window(key)
  local flat = redis.call('HGETALL', key)
  local slots, used, stale = {}, 0, {}
  for i = 1, #flat, 2 do
    local s = tonumber(flat[i])
    if s < oldest then
      stale[#stale + 1] = flat[i]
    else
      used = used + tonumber(flat[i + 1])
      slots[#slots + 1] = {s, tonumber(flat[i + 1])}
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  table.sort(slots, function(a, b) return a[1] < b[1] end)
  return used, slots
end
local function wait_ms(slots, used, need, limit)
  if limit == 0 then return 60000 end
  local freed = 0
  for _, s in ipairs(slots) do
    freed = freed + s[2]
    if used - freed + need <= limit then return (s[1] + 60) * 1000 - now_ms end
  end
  return 60000
end
local quota = {}
local refused, refused_kind, wait = -1, 0, -1
for b = 0, #KEYS / 3 - 1 do
  local base = 3 + 4 * b
  local limits = {tonumber(ARGV[base]), tonumber(ARGV[base + 1])}
  local needs = {1, tonumber(ARGV[base + 3])}
  for kind = 1, 2 do
    local limit = limits[kind]
    if limit >= 0 then
      local used, slots = window(KEYS[3 * b + kind])
      local remaining = math.max(0, limit - used - needs[kind])
      if quota[kind] == nil or remaining < quota[kind][2] then
        local newest = sec
        if #slots > 0 then newest = slots[#slots][1] end
        quota[kind] = {limit, remaining, (newest + 60) * 1000 - now_ms}
      end
      if limit == 0 or used + needs[kind] > limit then
        local w = wait_ms(slots, used, needs[kind], limit)
        if w > wait then refused, refused_kind, wait = b, kind, w end
      end
    end
  end
  local concurrency = tonumber(ARGV[base + 2])
  if concurrency >= 0 then
    local key = KEYS[3 * b + 3]
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
    if redis.call('ZCARD', key) >= concurrency and 1000 > wait then
      refused, refused_kind, wait = b, 3, 1000
    end
  end
end
if refused < 0 then
  local ttl = tonumber(ARGV[2])
  for b = 0, #KEYS / 3 - 1 do
    local base = 3 + 4 * b
    if tonumber(ARGV[base]) >= 0 then
      redis.call('HINCRBY', KEYS[3 * b + 1], sec, 1)
      redis.call('EXPIRE', KEYS[3 * b + 1], 120)
    end
    if tonumber(ARGV[base + 1]) >= 0 then
      redis.call('HINCRBY', KEYS[3 * b + 2], sec, tonumber(ARGV[base + 3]))
      redis.call('EXPIRE', KEYS[3 * b + 2], 120)
    end
    if tonumber(ARGV[base + 2]) >= 0 then
      redis.call('ZADD', KEYS[3 * b + 3], now_ms + ttl, ARGV[1])
      redis.call('PEXPIRE', KEYS[3 * b + 3], 2 * ttl)
    end
  end
end
local answer = {refused, refused_kind, wait, sec, now_ms}
for kind = 1, 2 do
  local q = quota[kind] or {-1, -1, -1}
  for i = 1, 3 do answer[#answer + 1] = q[i] end
end
return answer
"""

# KEYS: two per bucket (tokens, leases). ARGV: lease id, slot, then per bucket a token
# delta ("" for none). The slot is adjusted while it is in the window; after that only
# an overrun is charged, to the current second.
_FINISH = """
local sec = tonumber(redis.call('TIME')[1])
local slot = tonumber(ARGV[2])
for b = 0, #KEYS / 2 - 1 do
  redis.call('ZREM', KEYS[2 * b + 2], ARGV[1])
  local delta = tonumber(ARGV[3 + b])
  if delta ~= nil and delta ~= 0 then
    local key = KEYS[2 * b + 1]
    local current = redis.call('HGET', key, ARGV[2])
    if current and slot > sec - 60 then
      redis.call('HSET', key, ARGV[2], math.max(0, tonumber(current) + delta))
    elseif delta > 0 then
      redis.call('HINCRBY', key, sec, delta)
      redis.call('EXPIRE', key, 120)
    end
  end
end
return 1
"""

# KEYS: lease sets. ARGV: TTL (ms), then the lease id for each key.
_RENEW = """
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', until_ms, ARGV[i + 1])
  redis.call('PEXPIRE', key, 2 * tonumber(ARGV[1]))
end
return 1
"""


@contextlib.contextmanager
def _mapped(action: str) -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise LimiterBackendError(f"could not {action}: {type(exc).__name__}: {exc}") from exc


class RedisRateLimiter:
    """A `RateLimiter` shared by every gateway replica that uses the same Redis and prefix."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "vgw",
        lease_ttl_s: float = 30.0,
        on_renew_failure: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._on_renew_failure = on_renew_failure
        self._prefix = prefix
        self._ttl_ms = int(lease_ttl_s * 1000)
        self._admit = client.register_script(_ADMIT)
        self._finish = client.register_script(_FINISH)
        self._renew = client.register_script(_RENEW)
        # lease id -> the lease sets it is held in, for renewal.
        self._held: dict[str, list[str]] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._closing = False
        self.renew_failures = 0

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        prefix: str = "vgw",
        lease_ttl_s: float = 30.0,
        timeout_s: float = 0.5,
        on_renew_failure: Callable[[], None] | None = None,
    ) -> RedisRateLimiter:
        """A limiter with its own client that fails fast: an admission must not wait
        on a Redis that does not answer (the caller applies fail-open or fail-closed)."""
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=None,
        )
        client = Redis.from_pool(pool)
        return cls(
            client, prefix=prefix, lease_ttl_s=lease_ttl_s, on_renew_failure=on_renew_failure
        )

    def _keys(self, name: str) -> tuple[str, str, str]:
        base = f"{self._prefix}:rl:{name}"
        return f"{base}:r", f"{base}:t", f"{base}:c"

    async def admit(self, demand: Demand, lease: str) -> Grant | Refusal:
        keys: list[str] = []
        args: list[str | int] = [lease, self._ttl_ms]
        for bucket, charge in zip(demand.buckets, charges(demand), strict=True):
            keys.extend(self._keys(bucket.name))
            rates = bucket.rates
            for limit in (
                rates.requests_per_minute,
                rates.tokens_per_minute,
                rates.concurrent_requests,
            ):
                args.append(-1 if limit is None else limit)
            args.append(charge)
        with _mapped("admit a request"):
            answer = [int(value) for value in await self._admit(keys=keys, args=args)]
        refused, kind, wait_ms, slot, now_ms = answer[:5]
        requests, tokens = _quota(answer[5:8]), _quota(answer[8:11])
        if refused >= 0:
            bucket = demand.buckets[refused]
            return Refusal(bucket, KINDS[kind], wait_ms / 1000, requests, tokens)
        leases = [
            self._keys(b.name)[2] for b in demand.buckets if b.rates.concurrent_requests is not None
        ]
        if leases:
            self._held[lease] = leases
            self._start_renewing()
        reset = WINDOW_S - (now_ms % 1000) / 1000
        return Grant(demand, slot, lease, _reset(requests, reset), _reset(tokens, reset))

    async def finish(self, grant: Grant, tokens_used: int | None) -> None:
        self._held.pop(grant.lease, None)
        demand = grant.demand
        keys: list[str] = []
        args: list[str | int] = [grant.lease, grant.slot]
        for bucket, charge in zip(demand.buckets, charges(demand), strict=True):
            _, token_key, lease_key = self._keys(bucket.name)
            keys.extend((token_key, lease_key))
            settle = tokens_used is not None and bucket.rates.tokens_per_minute is not None
            args.append(tokens_used - charge if settle and tokens_used is not None else "")
        with _mapped("release a request"):
            await self._finish(keys=keys, args=args)

    async def ping(self) -> str:
        """For /readyz: "ok", or why Redis does not answer."""
        try:
            with _mapped("reach Redis"):
                await self._client.ping()
        except LimiterBackendError as exc:
            return f"unavailable: {exc}"
        return "ok"

    def _start_renewing(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        interval = self._ttl_ms / 3000
        while not self._closing:
            await asyncio.sleep(interval)
            pairs = [(key, lease) for lease, keys in self._held.items() for key in keys]
            if pairs:
                await self.renew(pairs)

    async def renew(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Move the expiry of every held lease forward; a failure is counted and the
        next interval tries again (a lease lives for three intervals)."""
        try:
            with _mapped("renew leases"):
                await self._renew(
                    keys=[key for key, _ in pairs],
                    args=[self._ttl_ms, *(lease for _, lease in pairs)],
                )
        except LimiterBackendError as exc:
            self.renew_failures += 1
            if self._on_renew_failure is not None:
                self._on_renew_failure()
            logger.warning("%s", exc)

    async def close(self) -> None:
        # The flag, not only the cancel, ends the renewal: on Python 3.11 a cancel that
        # lands as redis-py's write completes is swallowed by its `asyncio.wait_for`, and
        # the loop would renew on while close() waited for it forever.
        self._closing = True
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        await self._client.aclose()


def _quota(values: list[int]) -> Quota | None:
    limit, remaining, reset_ms = values
    return None if limit < 0 else Quota(limit, remaining, reset_ms / 1000)


def _reset(quota: Quota | None, reset_s: float) -> Quota | None:
    return None if quota is None else Quota(quota.limit, quota.remaining, reset_s)
