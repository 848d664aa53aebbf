"""The simulator's test-only control routes: the load it reports and its `/health` status.

Real vLLM has no such routes. They let a test change what a running simulator
reports, to exercise routing by load, load shedding and health checks. The
gateway never forwards them: its route allowlist forwards only
/v1/chat/completions, /v1/completions and /v1/embeddings.

```
GET|PUT /sim/load    {"waiting": N, "kv_cache": F | null}   null: the simulator's own figure
GET|PUT /sim/health  {"status": 200 | 503}                   what /health answers
```

A PUT may leave fields out (they keep their value) and answers the new
settings; a bad body is a 400 in vLLM's error shape.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from gateway.sim.config import ReportedLoad
from gateway.sim.errors import BadRequest, SimError
from gateway.sim.exchange import (
    JSON_HEADERS,
    ClientGone,
    Handler,
    Headers,
    Receive,
    Scope,
    Send,
    read_body,
    send_response,
)
from gateway.sim.fields import decode_object
from gateway.sim.metrics import SimMetrics

# vLLM's /health answers 200, or 503 once its engine is dead.
HEALTH_STATUSES = (200, 503)

Payload = dict[str, object]


class SimControl:
    """The settings behind the `/sim/*` routes, and the handlers that read and change them."""

    def __init__(self, metrics: SimMetrics) -> None:
        self._metrics = metrics
        self.health_status = 200

    def routes(self) -> dict[str, dict[str, Handler]]:
        return {
            "/sim/load": {"GET": self._get_load, "PUT": self._put_load},
            "/sim/health": {"GET": self._get_health, "PUT": self._put_health},
        }

    async def _get_load(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        await send_response(send, 200, self._load_body(), JSON_HEADERS)

    async def _put_load(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        await _update(receive, send, self._set_load)

    async def _get_health(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers
    ) -> None:
        await send_response(send, 200, self._health_body(), JSON_HEADERS)

    async def _put_health(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers
    ) -> None:
        await _update(receive, send, self._set_health)

    def _set_load(self, payload: Payload) -> bytes:
        self._metrics.report(load_update(self._metrics.reported, payload))
        return self._load_body()

    def _set_health(self, payload: Payload) -> bytes:
        _check_fields(payload, ("status",))
        if "status" not in payload:
            raise BadRequest("Field required", "status")
        self.health_status = _health_status(payload["status"])
        return self._health_body()

    def _load_body(self) -> bytes:
        reported = self._metrics.reported
        return _json({"waiting": reported.waiting, "kv_cache": reported.kv_cache})

    def _health_body(self) -> bytes:
        return _json({"status": self.health_status})


def load_update(current: ReportedLoad, payload: Payload) -> ReportedLoad:
    """CURRENT with the fields PAYLOAD names changed; a bad field is a `BadRequest`."""
    _check_fields(payload, ("waiting", "kv_cache"))
    waiting = _waiting(payload["waiting"]) if "waiting" in payload else current.waiting
    kv_cache = _kv_cache(payload["kv_cache"]) if "kv_cache" in payload else current.kv_cache
    return ReportedLoad(waiting=waiting, kv_cache=kv_cache)


async def _update(receive: Receive, send: Send, apply: Callable[[Payload], bytes]) -> None:
    """Read a JSON object, APPLY it, and answer the settings it returns (or the 400)."""
    try:
        body = await read_body(receive)
    except ClientGone:
        return
    try:
        answer = apply(decode_object(body))
    except SimError as error:
        await send_response(send, error.status, error.body(), JSON_HEADERS)
        return
    await send_response(send, 200, answer, JSON_HEADERS)


def _check_fields(payload: Payload, known: tuple[str, ...]) -> None:
    # Unknown fields are refused, so a misspelt setting cannot pass as a no-op.
    for name in payload:
        if name not in known:
            raise BadRequest(f"Unknown field; expected one of {', '.join(known)}", name)


def _waiting(value: object) -> int:
    # bool is an int to Python, but `true` is no count.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise BadRequest("waiting must be an integer >= 0", "waiting", value)


def _kv_cache(value: object) -> float | None:
    if value is None:
        return None
    # NaN fails both comparisons, so only a finite fraction passes.
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    raise BadRequest("kv_cache must be a number between 0 and 1, or null", "kv_cache", value)


def _health_status(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value in HEALTH_STATUSES:
        return value
    raise BadRequest("status must be 200 or 503", "status", value)


def _json(body: dict[str, object]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()
