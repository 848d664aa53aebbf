"""Affinity keys: which conversation a request belongs to, so that it goes to the
replica whose prefix cache already holds that conversation.

vLLM reuses the KV cache of a prompt's leading tokens (automatic prefix caching),
but only on the replica that computed them. The turns of a chat resend the whole
conversation, so each turn sent where the last one ran skips the prefill of
everything before it. What every turn of a conversation starts with, and what
sets one conversation apart from another, is its opening: the leading system or
developer messages and the first user message. A request's key is a hash of its
tenant and of the first `prefix_chars` characters of that opening:

- chat completions: `messages` up to and including the first with role `user`;
- Anthropic messages: `system` and the first of `messages`;
- Responses: `instructions` and `input` (a string, or its items up to and
  including the first with role `user`);
- completions: `prompt` (prompts that share their first `prefix_chars`
  characters share a key).

A request that carries the configured header (a session id) is keyed by the
header's value instead. Other routes, and requests with no opening to read, get
no key and go to the least busy replica. The opening is read as the contract left
it: any JSON value, walked without recursion and never past `prefix_chars`, so a
deep or wide one costs no more than a short one. The key is the tenant's own:
two tenants with one opening are two conversations.
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

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
                text = named[0].strip()[: self._chars].decode("latin-1")
                return _hash(tenant, "header", text)
        opening = _opening(route, payload)
        if opening is None:
            return None
        text = _text(opening, self._chars)
        return _hash(tenant, "opening", text) if text else None


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
    if route is Route.COMPLETIONS:
        prompt = payload.get("prompt")
        return None if prompt is None else [prompt]
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


def _hash(tenant: str | None, kind: str, text: str) -> int:
    message = f"{tenant or ''}\0{kind}\0{text}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(message, digest_size=8).digest(), "big")
