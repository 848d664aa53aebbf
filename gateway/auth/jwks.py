"""A cached JSON Web Key Set, fetched from an identity provider over HTTP.

    JWKSError
    ├── KeyNotFound        no key with that `kid`, even after a refresh
    └── JWKSUnavailable    the `kid` is unknown and the last fetch failed

The verifier maps both onto its own `UnknownKey`. Only signing keys of an
asymmetric type (RSA, EC, OKP) are kept: a symmetric `oct` key from a JWKS
would be an HMAC secret that anyone able to read the JWKS knows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from gateway.auth.jwt_config import JWKSPolicy

logger = logging.getLogger("gateway.auth.jwks")

ASYMMETRIC_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})


class JWKSError(Exception):
    pass


class KeyNotFound(JWKSError):
    pass


class JWKSUnavailable(JWKSError):
    pass


class _FetchFailed(Exception):
    """A fetch that produced no usable key set; the cache keeps its old keys."""


@dataclass(frozen=True, slots=True)
class JWK:
    """One usable key: the parsed public key and the `alg` it is bound to, if any."""

    kid: str
    key: Any
    algorithm: str | None


class JWKSCache:
    """Keys by `kid`, refreshed after a TTL and on an unknown `kid`, at a bounded rate.

    Concurrent refreshes coalesce: callers that wait on the lock while another
    refresh runs use its result instead of fetching again. A failed fetch keeps
    the previous keys and still counts as an attempt for the rate limit.
    """

    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        policy: JWKSPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._http = http
        self._policy = policy or JWKSPolicy()
        self._clock = clock
        self._keys: dict[str, JWK] = {}
        self._lock = asyncio.Lock()
        self._attempts = 0
        self._last_attempt: float | None = None
        self._fetched_at: float | None = None
        self._last_failed = False

    async def get(self, kid: str) -> JWK:
        """The key named KID; raises KeyNotFound or JWKSUnavailable."""
        if self._lock.locked():
            async with self._lock:
                pass  # a refresh is in flight: use its result rather than judge stale keys
        if self._stale():
            await self._refresh(self._attempts)
        found = self._keys.get(kid)
        if found is None and self._may_refresh():
            await self._refresh(self._attempts)
            found = self._keys.get(kid)
        if found is not None:
            return found
        if self._last_failed:
            raise JWKSUnavailable("the key set could not be fetched")
        raise KeyNotFound("no key with this kid")

    def _stale(self) -> bool:
        now = self._clock()
        if self._fetched_at is not None and 0 <= now - self._fetched_at < self._policy.ttl_s:
            return False
        return self._may_refresh()

    def _may_refresh(self) -> bool:
        if self._last_attempt is None:
            return True
        elapsed = self._clock() - self._last_attempt
        # A wall clock stepped backwards must not block refreshes until it catches up.
        return elapsed < 0 or elapsed >= self._policy.min_refresh_interval_s

    async def _refresh(self, seen_attempts: int) -> None:
        async with self._lock:
            if self._attempts != seen_attempts:
                return  # another caller refreshed while this one waited
            self._attempts += 1
            self._last_attempt = self._clock()
            try:
                keys = await self._fetch()
            except _FetchFailed as exc:
                self._last_failed = True
                logger.warning("JWKS fetch from %s failed: %s", self._url, exc)
                return
            self._keys = keys
            self._fetched_at = self._clock()
            self._last_failed = False

    async def _fetch(self) -> dict[str, JWK]:
        policy = self._policy
        try:
            async with self._http.stream("GET", self._url, timeout=policy.timeout_s) as response:
                if response.status_code != 200:
                    raise _FetchFailed(f"HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > policy.max_bytes:
                        raise _FetchFailed(f"larger than {policy.max_bytes} bytes")
        except httpx.HTTPError as exc:
            raise _FetchFailed(type(exc).__name__) from exc
        return _parse_jwks(bytes(body))


def _parse_jwks(body: bytes) -> dict[str, JWK]:
    """The usable signing keys of a JWKS document, by `kid`; bad entries are skipped."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _FetchFailed("not JSON") from exc
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise _FetchFailed("no 'keys' list")
    keys: dict[str, JWK] = {}
    for entry in entries:
        parsed = _parse_key(entry) if isinstance(entry, Mapping) else None
        if parsed is not None:
            keys[parsed.kid] = parsed
    return keys


def _parse_key(entry: Mapping[str, Any]) -> JWK | None:
    kid, alg = entry.get("kid"), entry.get("alg")
    if not isinstance(kid, str) or not kid or entry.get("kty") not in ASYMMETRIC_KEY_TYPES:
        return None
    if entry.get("use", "sig") != "sig" or not (alg is None or isinstance(alg, str)):
        return None
    if "d" in entry:
        return None  # a private key published by mistake: never trust it
    try:
        jwk = jwt.PyJWK(dict(entry))
    except jwt.PyJWTError as exc:
        logger.info("skipping JWKS key %r: %s", kid, exc)
        return None
    return JWK(kid=kid, key=jwk.key, algorithm=alg)
