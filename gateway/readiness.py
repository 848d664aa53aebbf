"""What /readyz reports: each store the gateway needs, and each model's replicas."""

from __future__ import annotations

import logging

from gateway.auth.service import AuthService
from gateway.keys.store import KeyStoreError
from gateway.limits.limiter import RateLimiter
from gateway.probes import OK, UNAVAILABLE
from gateway.upstreams.pool import Pools

logger = logging.getLogger("gateway")
# A well-formed key id no key has: reading it is the key store's readiness check.
PROBE_KEY_ID = "a" * 16


class ReadinessChecks:
    """States only ("ok", "unavailable"); why a check fails goes to the log, which may
    name hosts the callers of /readyz must not learn."""

    def __init__(self, auth: AuthService, limiter: RateLimiter, pools: Pools) -> None:
        self._auth = auth
        self._limiter = limiter
        self._pools = pools

    async def __call__(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        try:
            await self._auth.store.get(PROBE_KEY_ID)
            checks["key_store"] = OK
        except (KeyStoreError, RuntimeError) as exc:
            logger.warning("readiness: the key store is unavailable: %s", exc)
            checks["key_store"] = UNAVAILABLE
        ping = getattr(self._limiter, "ping", None)
        if ping is not None:
            state = await ping()
            if state != OK:
                logger.warning("readiness: the limits backend is %s", state)
            checks["limits"] = OK if state == OK else UNAVAILABLE
        for pool in self._pools.configured():
            usable = any(replica.usable for replica in pool.replicas)
            checks[f"model {pool.model}"] = OK if usable else UNAVAILABLE
        return checks
