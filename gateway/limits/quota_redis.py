"""The shared quota backend: Redis, one atomic script per admission and per settlement.

    {prefix}:quota:{owner}:{kind}:{period}   hash  u -> used, r -> reserved,
                                             s -> the highest soft mark reached

`period` names the UTC day (`2026-12-07`) or month (`2026-12`) the counter
counts. Each key expires GRACE_S after its period ends, as the gateway's clock
counts (relative TTLs: Redis's own clock need not agree). The period is taken from
the gateway's clock (the injected one): replicas should keep their clocks in
step (NTP), or a request in the seconds around midnight UTC may count in either day.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from redis.asyncio import BlockingConnectionPool, Redis

from gateway.limits.periods import window
from gateway.limits.quotas import (
    GRACE_S,
    Amounts,
    Counter,
    CounterState,
    QuotaDemand,
    QuotaGrant,
    QuotaRefusal,
    refusing,
    soft_mark,
)
from gateway.limits.redis_limiter import MAX_CONNECTIONS, _mapped

# KEYS: one per counter. ARGV: per counter, limit, amount, time to live (seconds), and
# the soft mark (-1: none). Returns 1 if charged (0 if not), then per counter used and
# reserved before the charge, and 1 if this charge is the first to reach its soft mark
# (field `s` keeps the highest mark reached, so a period counts each mark once).
_RESERVE = """
local n = #KEYS
local states = {}
local ok = 1
for i = 1, n do
  local v = redis.call('HMGET', KEYS[i], 'u', 'r', 's')
  local used, reserved = tonumber(v[1] or 0), tonumber(v[2] or 0)
  states[i] = {used, reserved, tonumber(v[3] or -1)}
  if used + reserved + tonumber(ARGV[4 * i - 2]) > tonumber(ARGV[4 * i - 3]) then ok = 0 end
end
local out = {ok}
for i = 1, n do
  local crossed = 0
  if ok == 1 then
    -- Redis is handed the gateway's own digits, never a Lua number turned back to text.
    local amount, mark = tonumber(ARGV[4 * i - 2]), tonumber(ARGV[4 * i])
    redis.call('HINCRBY', KEYS[i], 'r', ARGV[4 * i - 2])
    if states[i][3] < mark and mark <= states[i][1] + states[i][2] + amount then
      redis.call('HSET', KEYS[i], 's', ARGV[4 * i])
      crossed = 1
    end
    redis.call('EXPIRE', KEYS[i], ARGV[4 * i - 1])
  end
  out[#out + 1] = states[i][1]
  out[#out + 1] = states[i][2]
  out[#out + 1] = crossed
end
return out
"""

# KEYS: the grant's counters. ARGV: per counter, reservation, usage, time to live.
_SETTLE = """
for i = 1, #KEYS do
  local r = redis.call('HINCRBY', KEYS[i], 'r', -tonumber(ARGV[3 * i - 2]))
  if r < 0 then redis.call('HSET', KEYS[i], 'r', 0) end
  redis.call('HINCRBY', KEYS[i], 'u', ARGV[3 * i - 1])
  redis.call('EXPIRE', KEYS[i], ARGV[3 * i])
end
return 1
"""


class RedisQuotas:
    """A `QuotaBackend` shared by every replica on the same Redis and prefix."""

    def __init__(
        self, client: Redis, *, prefix: str = "vgw", clock: Callable[[], float] = time.time
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._clock = clock
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        prefix: str = "vgw",
        timeout_s: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> RedisQuotas:
        """A backend with its own client that fails fast, as the rate limiter's does."""
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=None,
        )
        return cls(Redis.from_pool(pool), prefix=prefix, clock=clock)

    def _key(self, counter: Counter, period: str) -> str:
        return f"{self._prefix}:quota:{counter.owner}:{counter.kind}:{period}"

    async def reserve(self, demand: QuotaDemand) -> QuotaGrant | QuotaRefusal:
        now = self._clock()
        windows = [window(counter.period, now) for counter in demand.counters]
        keys, args = [], []
        for counter, period in zip(demand.counters, windows, strict=True):
            keys.append(self._key(counter, period.name))
            amount = demand.amounts.of(counter.kind)
            mark = soft_mark(demand.soft_threshold, counter.limit)
            args += [counter.limit, amount, _ttl(period.end, now), mark]
        with _mapped("reserve quotas"):
            answer = await self._reserve(keys=keys, args=args)
        states, crossed = [], []
        for i, (counter, period) in enumerate(zip(demand.counters, windows, strict=True)):
            used, reserved = int(answer[1 + 3 * i]), int(answer[2 + 3 * i])
            states.append(CounterState(counter, period, used, reserved, used + reserved))
            crossed.append(int(answer[3 + 3 * i]) == 1)
        if int(answer[0]) != 1:
            refused = refusing(states, demand.amounts)
            assert refused is not None  # the script refused on the same numbers
            return QuotaRefusal(refused, tuple(states))
        charged = tuple(
            CounterState(
                s.counter,
                s.window,
                s.used,
                s.reserved + demand.amounts.of(s.counter.kind),
                s.before,
                first,
            )
            for s, first in zip(states, crossed, strict=True)
        )
        return QuotaGrant(demand, charged)

    async def settle(self, grant: QuotaGrant, used: Amounts | None) -> None:
        reserved = grant.demand.amounts
        now = self._clock()
        keys, args = [], []
        for state in grant.states:
            kind = state.counter.kind
            keys.append(self._key(state.counter, state.window.name))
            usage = reserved.of(kind) if used is None else used.of(kind)
            args += [reserved.of(kind), usage, _ttl(state.window.end, now)]
        with _mapped("settle quotas"):
            await self._settle(keys=keys, args=args)

    async def read(self, counters: Sequence[Counter]) -> list[CounterState]:
        now = self._clock()
        states = []
        with _mapped("read quotas"):
            async with self._client.pipeline(transaction=False) as pipe:
                windows = [window(counter.period, now) for counter in counters]
                for counter, period in zip(counters, windows, strict=True):
                    pipe.hmget(self._key(counter, period.name), ["u", "r"])
                answers = await pipe.execute()
        for counter, period, (used, reserved) in zip(counters, windows, answers, strict=True):
            u, r = int(used or 0), int(reserved or 0)
            states.append(CounterState(counter, period, u, r, u + r))
        return states

    async def close(self) -> None:
        await self._client.aclose()


def _ttl(end: float, now: float) -> int:
    """Seconds from NOW until GRACE_S past the period's END; at least one."""
    return max(1, math.ceil(end + GRACE_S - now))
