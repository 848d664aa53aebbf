"""The API key string: `vgw_<id>_<secret>`, and how its secret is hashed.

    vgw_ 7mq3x2kd5ahf4e6p _ 52 characters of base32 (32 random bytes)
    prefix  id (16 chars, 80 bits)   secret

Both parts use lowercase RFC 4648 base32 (`a-z`, `2-7`), which holds no `_`,
so the string splits one way only, is safe in URLs and headers, survives a
double-click copy, and its fixed prefix and length let secret scanners spot it.
The id is public: it names the key in logs, the admin API and the store. The
secret never leaves the client after it is shown once; the store keeps only
HMAC-SHA256(pepper, secret), where the pepper is a server secret from the
settings, so a leaked store alone cannot be used to try guesses offline.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

PREFIX = "vgw_"
ID_BYTES = 10
SECRET_BYTES = 32
ID_LENGTH = 16  # base32 of 10 bytes
SECRET_LENGTH = 52  # base32 of 32 bytes, unpadded
KEY_LENGTH = len(PREFIX) + ID_LENGTH + 1 + SECRET_LENGTH

_ID = re.compile(f"[a-z2-7]{{{ID_LENGTH}}}")
_KEY = re.compile(f"{PREFIX}([a-z2-7]{{{ID_LENGTH}}})_([a-z2-7]{{{SECRET_LENGTH}}})")


class MalformedKey(ValueError):
    """A string that is not an API key of this gateway. The message never repeats the input."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A parsed or freshly generated key. `repr` hides the secret; `token` reveals it."""

    id: str
    secret: str = field(repr=False)

    @property
    def token(self) -> str:
        """The full key string, as the client sends it. Show it once, never log it."""
        return f"{PREFIX}{self.id}_{self.secret}"


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def new_key_id() -> str:
    return _b32(secrets.token_bytes(ID_BYTES))


def generate(key_id: str | None = None) -> ApiKey:
    """A new key; pass `key_id` to make a new secret for an existing key (rotation)."""
    if key_id is None:
        key_id = new_key_id()
    elif not is_key_id(key_id):
        raise MalformedKey(f"a key id is {ID_LENGTH} characters of lowercase base32")
    return ApiKey(id=key_id, secret=_b32(secrets.token_bytes(SECRET_BYTES)))


def is_key_id(text: str) -> bool:
    return isinstance(text, str) and _ID.fullmatch(text) is not None


def parse(text: str) -> ApiKey:
    """Split a key string into id and secret; raise `MalformedKey` for anything else.

    Checks the length first so a huge header costs nothing, and never puts any
    part of the input in the error: it may be someone's secret.
    """
    if not isinstance(text, str):
        raise MalformedKey("an API key is text")
    if not text:
        raise MalformedKey("the API key is empty")
    if not text.startswith(PREFIX):
        raise MalformedKey(f"an API key starts with {PREFIX!r}")
    if len(text) != KEY_LENGTH:
        raise MalformedKey(f"an API key is {KEY_LENGTH} characters long, this one {len(text)}")
    match = _KEY.fullmatch(text)
    if match is None:
        raise MalformedKey(
            f"an API key is {PREFIX!r}, {ID_LENGTH} characters of a-z and 2-7, '_',"
            f" then {SECRET_LENGTH} characters of a-z and 2-7"
        )
    return ApiKey(id=match.group(1), secret=match.group(2))


def hash_secret(pepper: bytes, secret: str) -> str:
    """HMAC-SHA256 of the secret under the server pepper, as lowercase hex."""
    if not pepper:
        raise ValueError("the key pepper must not be empty")
    return hmac.new(pepper, secret.encode("utf-8"), hashlib.sha256).hexdigest()


def verify(pepper: bytes, secret: str, secret_hash: str) -> bool:
    """Whether `secret` hashes to `secret_hash`, compared in constant time."""
    expected = hash_secret(pepper, secret).encode("ascii")
    return hmac.compare_digest(expected, secret_hash.encode("utf-8"))


# Hashed under the pepper like a secret, with a label no secret can equal: it names the
# pepper (two stores or files agree on it) without giving anything to test guesses against.
_FINGERPRINT_LABEL = "vllm-gateway pepper fingerprint v1"


def pepper_fingerprint(pepper: bytes) -> str:
    """16 hex characters that identify the pepper and reveal nothing of it."""
    return hash_secret(pepper, _FINGERPRINT_LABEL)[:16]
