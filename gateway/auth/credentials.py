"""From an `Authorization` header to a `Principal`: API keys first, then JWTs.

    AuthError (gateway.auth.errors)   401, OpenAI-shaped, `reason` for metrics
    ├── MissingCredentials            no usable `Authorization: Bearer ...`
    └── InvalidApiKey                 unknown, wrong secret, revoked or expired key
    CredentialStoreUnavailable        503: the key store cannot be read (key_cache.py)

Key records come from a per-process `KeyCache` (key_cache.py): a known key
costs no store round trip on most requests, a revocation reaches every replica
within a second through the store's change feed, and within the cache's
staleness bound even when that feed is cut. Unknown ids are cached briefly too,
so a flood of made-up keys cannot turn into a flood of store reads.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from gateway.auth.errors import AuthError
from gateway.auth.key_cache import KeyCache
from gateway.keys.format import PREFIX, MalformedKey, parse
from gateway.keys.records import KeyRecord
from gateway.principal import Principal

MAX_HEADER_BYTES = 4096
# Principals kept for the records they were made from; a flood of keys stays bounded.
MAX_PRINCIPALS = 100_000


class MissingCredentials(AuthError):
    code = "missing_api_key"
    default_reason = "missing"


class InvalidApiKey(AuthError):
    code = "invalid_api_key"
    default_reason = "invalid_key"


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
        # Key id -> the record its principal was made from, and that principal: made once
        # per record the cache reads, not per request.
        self._principals: dict[str, tuple[KeyRecord, Principal]] = {}

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
        return self._principal(record)

    def _principal(self, record: KeyRecord) -> Principal:
        made = self._principals.get(record.id)
        if made is not None and made[0] is record:
            return made[1]
        if len(self._principals) >= MAX_PRINCIPALS:
            self._principals.clear()
        principal = record.principal()
        self._principals[record.id] = (record, principal)
        return principal
