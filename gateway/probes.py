"""`/healthz`, `/readyz` and `/metrics`: answered by the gateway itself, before any
authentication, and never forwarded (vLLM's own `/metrics` stays unreachable).

`/healthz` says the process is alive and serving. `/readyz` says it can do its
job: it is not draining (gateway/drain.py), the key store (and the limits
backend, when it is Redis) answers, and, unless `probes.ready_requires_models`
is off, every configured model has a replica it may use; with it off the
models' states are still in the body but do not make the gateway unready.
Probes are not in the access log: an orchestrator asks every few seconds.

Anonymous callers on the client listener learn nothing about tenants or
models: `/metrics` (which names them) is served only to a trusted caller, a
loopback peer or one with the metrics token, and is an unknown route (404)
to anyone else; `/readyz` tells them one state for all models together.
States are names only ("ok", "unavailable"): the reasons go to the log.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Mapping

import orjson

from gateway.asgi import Scope, Send, send_bytes
from gateway.drain import DRAINING, Drain
from gateway.metrics import CONTENT_TYPE, Metrics
from gateway.proxy.headers import header_value

HEALTHZ, READYZ, METRICS = "/healthz", "/readyz", "/metrics"
JSON = [(b"content-type", b"application/json")]
Readiness = Callable[[], Awaitable[Mapping[str, str]]]
OK = "ok"
UNAVAILABLE = "unavailable"
DRAIN_CHECK = "drain"
# Readiness checks named after a model start so; an untrusted caller sees them as one.
MODEL_CHECK = "model "
MODELS_CHECK = "models"


class Trust:
    """Who may see what names tenants and models: loopback peers (unless turned off)
    and callers presenting `Bearer <token>`."""

    def __init__(self, token: str | None, *, loopback: bool) -> None:
        self._expected = f"Bearer {token}".encode() if token else None
        self._loopback = loopback

    def __call__(self, scope: Scope) -> bool:
        if self._loopback and _is_loopback(scope.get("client")):
            return True
        if self._expected is None:
            return False
        given = header_value(scope["headers"], b"authorization") or b""
        return hmac.compare_digest(given, self._expected)


def _is_loopback(client: tuple[str, int] | None) -> bool:
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


class Probes:
    def __init__(
        self,
        metrics: Metrics,
        readiness: Readiness,
        trust: Trust,
        *,
        serve_metrics: bool,
        drain: Drain | None = None,
        models_required: bool = True,
    ) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._trust = trust
        self._drain = drain
        self._models_required = models_required
        paths = {HEALTHZ, READYZ} | ({METRICS} if serve_metrics else set())
        self.paths = frozenset(paths)

    def handles(self, scope: Scope) -> bool:
        path = scope["path"]
        if path not in self.paths or scope["method"] not in ("GET", "HEAD"):
            return False
        # An untrusted caller's /metrics goes on to the proxy, whose answer is the 404
        # of any unknown route: nothing tells that it exists.
        return path != METRICS or self._trust(scope)

    async def __call__(self, scope: Scope, send: Send) -> None:
        path = scope["path"]
        if path == METRICS:
            await self.metrics(send)
        elif path == HEALTHZ:
            await send_bytes(send, 200, b'{"status":"ok"}', JSON)
        else:
            await self._ready(scope, send)

    async def _ready(self, scope: Scope, send: Send) -> None:
        if self._drain is not None and self._drain.draining:
            # At once, whatever the stores say: a draining process leaves the rotation.
            body = orjson.dumps({"status": DRAINING, "checks": {DRAIN_CHECK: DRAINING}})
            await send_bytes(send, 503, body, JSON)
            return
        checks = dict(await self._readiness())
        required = self._models_required
        ready = all(
            state == OK
            for name, state in checks.items()
            if required or not name.startswith(MODEL_CHECK)
        )
        if not self._trust(scope):
            checks = _without_model_names(checks)
        body = orjson.dumps({"status": "ready" if ready else "not ready", "checks": checks})
        await send_bytes(send, 200 if ready else 503, body, JSON)

    async def metrics(self, send: Send) -> None:
        await send_bytes(send, 200, self._metrics.render(), [(b"content-type", CONTENT_TYPE)])


def _without_model_names(checks: dict[str, str]) -> dict[str, str]:
    shown = {name: state for name, state in checks.items() if not name.startswith(MODEL_CHECK)}
    models = [state for name, state in checks.items() if name.startswith(MODEL_CHECK)]
    if models:
        shown[MODELS_CHECK] = OK if all(state == OK for state in models) else UNAVAILABLE
    return shown
