"""Affinity keys: which conversation a request belongs to, so that it goes to the
replica whose prefix cache already holds that conversation.

vLLM reuses the KV cache of a prompt's leading tokens (automatic prefix caching),
but only on the replica that computed them. The turns of a chat resend the whole
conversation, so each turn sent where the last one ran skips the prefill of
everything before it. What every turn of a conversation starts with, and what
sets one conversation apart from another, is its opening: the leading system or
developer messages and the first user message. A request's key is a hash of its
tenant and of that opening, whole (a system prompt shared by every conversation
is often longer than any fixed cut, and would make them all one):

- chat completions: `messages` up to and including the first with role `user`;
- Anthropic messages: `system` and the first of `messages`;
- Responses: `instructions` and `input` (a string, or its items up to and
  including the first with role `user`).

A completions prompt has no structure and grows with each turn, so its key is
its first `prefix_chars` characters. A request that carries the configured header
(a session id) is keyed by the first `prefix_chars` characters of the header's
value instead. Other routes, and requests with no opening to read, get no key and
go to the least busy replica.

The opening is serialised by orjson (C, no larger than the body already parsed)
and hashed; one nested past orjson's depth limit is read instead by a walk with
no recursion that stops at `prefix_chars` characters. The key is the tenant's
own: two tenants with one opening are two conversations.
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import orjson

from gateway.proxy.routes import Route


class Affinity:
    def __init__(self, prefix_chars: int, header: str | None = None) -> None:
        self._chars = prefix_chars
        self._header = None if header is None else header.lower().encode("latin-1")

    def key(
        self,
        route: Route,
        payload: dict[str, Any],
        headers: list[tuple[bytes, bytes]],
        tenant: str | None,
    ) -> int | None:
        """The request's affinity key, or None when it has none."""
        if self._header is not None:
            named = [value for name, value in headers if name.lower() == self._header]
            if len(named) == 1 and named[0].strip():
                return _hash(tenant, b"header", named[0].strip()[: self._chars])
        if route is Route.COMPLETIONS:
            prompt = payload.get("prompt")
            text = "" if prompt is None else _text(prompt, self._chars)
            return _hash(tenant, b"prompt", _utf8(text)) if text else None
        opening = _opening(route, payload)
        if opening is None:
            return None
        try:
            return _hash(tenant, b"opening", orjson.dumps(opening))
        except orjson.JSONEncodeError:  # nested deeper than orjson writes
            return _hash(tenant, b"deep", _utf8(_text(opening, self._chars)))


def _opening(route: Route, payload: dict[str, Any]) -> list[Any] | None:
    if route is Route.CHAT:
        return _through_first_user(payload.get("messages"))
    if route is Route.MESSAGES:
        messages = payload.get("messages")
        first = messages[:1] if isinstance(messages, list) and messages else None
        return None if first is None else [payload.get("system"), *first]
    if route is Route.RESPONSES:
        given = payload.get("input")
        items = [given] if isinstance(given, str) else _through_first_user(given)
        return None if not items else [payload.get("instructions"), *items]
    return None


def _through_first_user(items: object) -> list[Any] | None:
    if not isinstance(items, list) or not items:
        return None
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("role") == "user":
            return items[: index + 1]
    return items


def _text(value: object, limit: int) -> str:
    """VALUE as text, at most LIMIT characters. Strings carry their length and
    containers their ends, so that no two different values read alike; an object's
    members are read in the order sent. Each member or item adds at least one
    character, so only the first LIMIT of any container are looked at."""
    pieces: list[str] = []
    left = limit
    # (True, text to add as it is) or (False, a JSON value still to read).
    stack: list[tuple[bool, object]] = [(False, value)]
    while stack and left > 0:
        ready, item = stack.pop()
        if ready:
            piece = str(item)
        elif isinstance(item, str):
            piece = f"{len(item)}'{item[:left]}"
        elif isinstance(item, dict):
            piece = "{"
            stack.append((True, "}"))
            members = list(itertools.islice(item.items(), left))
            for name, member in reversed(members):
                stack.extend(((False, member), (True, f"{len(name)}:{name[:left]}")))
        elif isinstance(item, list):
            piece = "["
            stack.append((True, "]"))
            stack.extend((False, element) for element in reversed(item[:left]))
        else:
            piece = repr(item)  # numbers, booleans and null
        piece = piece[:left]
        pieces.append(piece)
        left -= len(piece)
    return "".join(pieces)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _hash(tenant: str | None, kind: bytes, content: bytes) -> int:
    message = b"\0".join((_utf8(tenant or ""), kind, content))
    return int.from_bytes(hashlib.blake2b(message, digest_size=8).digest(), "big")
