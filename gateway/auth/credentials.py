"""From an `Authorization` header to a `Principal`: API keys first, then JWTs.

    AuthError (gateway.auth.errors)   401, OpenAI-shaped, `reason` for metrics
    ├── MissingCredentials            no usable `Authorization: Bearer ...`
    └── InvalidApiKey                 unknown, wrong secret, revoked or expired key
    CredentialStoreUnavailable        503: the key store cannot be read

Key records are cached per process and dropped when the store announces a
change (Redis pub/sub reaches every replica), so a known key costs no store
round trip, and a revocation still takes effect everywhere within a second.
Unknown ids are cached briefly too, so a flood of made-up keys cannot turn
into a flood of store reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from gateway.auth.errors import AuthError
from gateway.auth.principal import Principal
from gateway.errors import GatewayError
from gateway.keys.format import PREFIX, MalformedKey, parse
from gateway.keys.records import KeyRecord
from gateway.keys.store import KeyStore, KeyStoreUnavailable

logger = logging.getLogger("gateway.auth")

MAX_HEADER_BYTES = 4096
MISS_TTL_S = 1.0
# last_used_at is written at most this often per key, off the request path.
USE_RECORD_INTERVAL_S = 60.0
RESUBSCRIBE_DELAY_S = 1.0


class MissingCredentials(AuthError):
    code = "missing_api_key"
    default_reason = "missing"


class InvalidApiKey(AuthError):
    code = "invalid_api_key"
    default_reason = "invalid_key"


class CredentialStoreUnavailable(GatewayError):
    status = 503
    error_type = "server_error"
    code = "auth_unavailable"


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> Principal: ...


def bearer_token(header: bytes | None) -> str:
    """The token of an `Authorization: Bearer <token>` header, or MissingCredentials."""
    if not header:
        raise MissingCredentials("You didn't provide an API key (Authorization: Bearer ...).")
    if len(header) > MAX_HEADER_BYTES:
        raise MissingCredentials("The Authorization header is too long.", reason="malformed")
    try:
        text = header.decode("ascii")
    except UnicodeDecodeError as exc:
        raise MissingCredentials(
            "The Authorization header must be ASCII.", reason="malformed"
        ) from exc
    scheme, _, token = text.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise MissingCredentials(
            "Use the Authorization header with the Bearer scheme.", reason="malformed"
        )
    return token


class KeyCache:
    """Key records by id, kept until the store says the key changed."""

    def __init__(self, store: KeyStore, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._clock = clock
        self._records: dict[str, KeyRecord] = {}
        self._misses: dict[str, float] = {}
        self._listener: asyncio.Task[None] | None = None
        self._recorded: dict[str, float] = {}
        self._writes: set[asyncio.Task[None]] = set()

    def note_use(self, key_id: str, when: datetime) -> None:
        """Move the key's last_used_at forward, in the background, once a minute at most."""
        now = self._clock()
        last = self._recorded.get(key_id)
        if last is not None and now - last < USE_RECORD_INTERVAL_S:
            return
        self._recorded[key_id] = now
        task = asyncio.get_running_loop().create_task(self._record_use(key_id, when))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _record_use(self, key_id: str, when: datetime) -> None:
        try:
            await self._store.record_use(key_id, when)
        except KeyStoreUnavailable as exc:
            self._recorded.pop(key_id, None)  # try again on the next use
            logger.warning("could not record the use of key %s: %s", key_id, exc)

    async def get(self, key_id: str) -> KeyRecord | None:
        record = self._records.get(key_id)
        if record is not None:
            return record
        missed = self._misses.get(key_id)
        if missed is not None and self._clock() - missed < MISS_TTL_S:
            return None
        try:
            record = await self._store.get(key_id)
        except KeyStoreUnavailable as exc:
            raise CredentialStoreUnavailable(
                "API keys cannot be checked right now; retry shortly.", headers={"retry-after": "1"}
            ) from exc
        if record is None:
            self._misses[key_id] = self._clock()
            if len(self._misses) > 100_000:
                self._misses.clear()
        else:
            self._records[key_id] = record
        return record

    def forget(self, key_id: str | None = None) -> None:
        if key_id is None:
            self._records.clear()
            self._misses.clear()
        else:
            self._records.pop(key_id, None)
            self._misses.pop(key_id, None)

    def start(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def stop(self) -> None:
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=2.0)
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    async def _listen(self) -> None:
        while True:
            try:
                async with self._store.changes() as changes:
                    # Anything cached before the subscription was live may be stale.
                    self.forget()
                    async for key_id in changes:
                        self.forget(key_id)
            except KeyStoreUnavailable as exc:
                logger.warning("key change feed lost (%s); retrying", exc)
            self.forget()
            await asyncio.sleep(RESUBSCRIBE_DELAY_S)


class Authenticator:
    """Resolves a request's credentials to a Principal; see the module docstring."""

    def __init__(
        self,
        keys: KeyCache,
        pepper: bytes,
        jwt: TokenVerifier | None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._keys = keys
        self._pepper = pepper
        self._jwt = jwt
        self._now = now

    async def authenticate(self, header: bytes | None) -> Principal:
        token = bearer_token(header)
        if token.startswith(PREFIX):
            return await self._key_principal(token)
        if self._jwt is None:
            raise InvalidApiKey("Incorrect API key provided.")
        return await self._jwt.verify(token)

    async def _key_principal(self, token: str) -> Principal:
        try:
            key = parse(token)
        except MalformedKey as exc:
            raise InvalidApiKey("Incorrect API key provided.", reason="malformed") from exc
        record = await self._keys.get(key.id)
        now = self._now()
        if record is None or not record.secret_matches(self._pepper, key.secret, now):
            raise InvalidApiKey("Incorrect API key provided.")
        if record.revoked_at is not None:
            raise InvalidApiKey("This API key has been revoked.", reason="revoked")
        if not record.is_usable(now):
            raise InvalidApiKey("This API key has expired.", reason="expired")
        self._keys.note_use(record.id, now)
        return record.principal()
