"""`/healthz`, `/readyz` and `/metrics`: answered by the gateway itself, before any
authentication, and never forwarded (vLLM's own `/metrics` stays unreachable).

`/healthz` says the process is alive and serving. `/readyz` says it can do its
job: the key store (and the limits backend, when it is Redis) answers, and
every configured model has a replica it may use. Probes are not in the access
log: an orchestrator asks every few seconds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import orjson

from gateway.asgi import Scope, Send, send_bytes
from gateway.metrics import CONTENT_TYPE, Metrics

HEALTHZ, READYZ, METRICS = "/healthz", "/readyz", "/metrics"
JSON = [(b"content-type", b"application/json")]
Readiness = Callable[[], Awaitable[Mapping[str, str]]]
OK = "ok"


class Probes:
    def __init__(self, metrics: Metrics, readiness: Readiness, *, serve_metrics: bool) -> None:
        self._metrics = metrics
        self._readiness = readiness
        paths = {HEALTHZ, READYZ} | ({METRICS} if serve_metrics else set())
        self.paths = frozenset(paths)

    def handles(self, scope: Scope) -> bool:
        return scope["path"] in self.paths and scope["method"] in ("GET", "HEAD")

    async def __call__(self, scope: Scope, send: Send) -> None:
        path = scope["path"]
        if path == METRICS:
            await self.metrics(send)
        elif path == HEALTHZ:
            await send_bytes(send, 200, b'{"status":"ok"}', JSON)
        else:
            checks = await self._readiness()
            ready = all(state == OK for state in checks.values())
            body = orjson.dumps({"status": "ready" if ready else "not ready", "checks": checks})
            await send_bytes(send, 200 if ready else 503, body, JSON)

    async def metrics(self, send: Send) -> None:
        await send_bytes(send, 200, self._metrics.render(), [(b"content-type", CONTENT_TYPE)])
