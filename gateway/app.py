"""`create_app(settings)`: the gateway's ASGI app, its middleware order and its lifespan."""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Awaitable, Callable

from gateway.access_log import AccessLog
from gateway.admin.audit import AuditLog
from gateway.asgi import ASGIApp, Receive, Scope, Send, send_bytes
from gateway.auth.service import AuthService
from gateway.errors import error_body
from gateway.keys.store import KeyStoreError
from gateway.limits.setup import admissions, limiter_backend
from gateway.metrics import Metrics
from gateway.middleware.context import RequestContextMiddleware
from gateway.middleware.errors import ErrorBoundary
from gateway.probes import METRICS, OK, UNAVAILABLE, Probes, Trust
from gateway.proxy.handler import ProxyApp, ProxyOptions
from gateway.proxy.upstream import Timeouts, UpstreamClient
from gateway.settings import Settings
from gateway.tls import upstream_context
from gateway.upstreams.discovery import Discovery
from gateway.upstreams.monitor import ReplicaMonitor
from gateway.upstreams.setup import discovery_sources, pools_from_settings
from gateway.usage.open import open_usage_store
from gateway.usage.recorder import UsageRecorder
from gateway.usage.records import TokenUsage
from gateway.usage.store import UsageStore

logger = logging.getLogger("gateway")
ADMIN_PREFIX = "/admin"
# A well-formed key id no key has: reading it is the key store's readiness check.
PROBE_KEY_ID = "a" * 16


def build_stack(proxy: ASGIApp, access_log: AccessLog, metrics: Metrics) -> ASGIApp:
    """The request path, outermost first.

    The request context comes first so that every response, including the
    error boundary's, carries the request id and is logged exactly once.
    """
    return RequestContextMiddleware(ErrorBoundary(proxy, metrics), access_log, metrics)


class Gateway:
    """The ASGI app: the lifespan opens and closes every shared resource."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        timeouts = Timeouts(
            connect=settings.timeouts.connect,
            first_byte=settings.timeouts.first_byte,
            idle=settings.timeouts.idle,
            client_write=settings.timeouts.client_write,
        )
        self.upstream = UpstreamClient(
            timeouts, upstream_context(settings.upstream_tls), settings.upstream_max_connections
        )
        self.pools = pools_from_settings(settings)
        self.access_log = AccessLog(sys.stderr, settings.log)
        if settings.auth.pepper is None:
            raise ValueError("auth.pepper must be set before the app is built")
        self.auth = AuthService(settings.auth, settings.auth.pepper.get_secret_value().encode())
        self.metrics = Metrics(key_label=settings.metrics.key_label)
        self.limiter = limiter_backend(settings, self.metrics)
        self.admissions = admissions(settings, self.limiter, self.metrics)
        # Opened in the lifespan, beside the keys.
        self._usage_store: UsageStore | None = None
        self._recorder: UsageRecorder | None = None
        upstreams = settings.upstreams
        options = ProxyOptions(
            max_body_bytes=settings.max_body_bytes,
            refuse_over_cap=settings.limits.max_tokens_policy == "refuse",
            default_reserve=settings.limits.default_completion_reserve,
            max_batch=settings.limits.max_batch,
            tenant_max_batch={
                tenant: given.max_batch
                for tenant, given in settings.limits.tenants.items()
                if given.max_batch is not None
            },
            retries=upstreams.retries,
            eject_after=upstreams.health.eject_after,
            shed_waiting_above=upstreams.load.shed_waiting_above,
            shed_status=upstreams.load.shed_status,
            shed_retry_after=upstreams.load.shed_retry_after,
        )
        watch_load = (
            upstreams.load.picking == "load_aware" or upstreams.load.shed_waiting_above is not None
        )
        self.monitor = ReplicaMonitor(
            self.pools,
            lambda: self.upstream.session,
            upstreams,
            watch_load=watch_load,
            replica_up=self.metrics.replica_up,
        )
        self.discovery = Discovery(
            self.pools,
            discovery_sources(settings),
            interval=upstreams.discovery_interval,
            joined=self.monitor.check_all,
        )
        proxy = ProxyApp(
            self.pools,
            self.upstream,
            self.auth,
            limits=self.admissions,
            usage=self,
            options=options,
            metrics=self.metrics,
        )
        self._http = build_stack(proxy, self.access_log, self.metrics)
        token = settings.metrics.token
        trust = Trust(
            token.get_secret_value() if token else None,
            loopback=settings.metrics.trust_loopback,
        )
        self.probes = Probes(
            self.metrics, self.readiness, trust, serve_metrics=settings.metrics.listener == "main"
        )
        # Built in the lifespan, once the key store is open; nothing at all without admins.
        self._admin: ASGIApp | None = None
        self._audit: AuditLog | None = None
        self._admin_enabled = bool(settings.admin.tokens or settings.admin.jwt_claim)
        # With a listener of its own, the admin API is not reachable on the client one.
        self._admin_here = self._admin_enabled and settings.admin.listen is None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if self._admin_here and scope["path"].startswith(ADMIN_PREFIX):
                await self.admin(scope, receive, send)
            elif self.probes.handles(scope):
                await self.probes(scope, send)
            else:
                await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.upstream.open()
                    self.monitor.start()
                    self.discovery.start()
                    await self.auth.open()
                    self._usage_store = await open_usage_store(self.settings.auth.key_store)
                    self._recorder = UsageRecorder(self._usage_store)
                    self._recorder.start()
                    if self._admin_enabled:
                        await self._open_admin()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    raise
                # What start-up built lives as long as the process: keep it out of the
                # collector's full passes, which otherwise walk it again and again.
                gc.freeze()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.discovery.stop()
                await self.monitor.stop()
                await self.upstream.close()
                if self._recorder is not None:
                    await self._recorder.stop()
                if self._usage_store is not None:
                    await self._usage_store.close()
                await self.limiter.close()
                await self.auth.close()
                if self._audit is not None:
                    await self._audit.close()
                self.access_log.flush()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def admin(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The admin API's entry, for /admin on this app or for its own listener."""
        if scope["type"] != "http":
            return
        if scope["path"] == METRICS and self.settings.metrics.listener == "admin":
            await self.probes.metrics(send)
            return
        if self._admin is None:
            body = error_body("The gateway is starting.", "server_error", None, None)
            await send_bytes(send, 503, body, [(b"retry-after", b"1")])
            return
        await self._admin(scope, receive, send)

    async def _open_admin(self) -> None:
        from gateway.admin.mount import admin_app, open_audit_log  # noqa: PLC0415 (see mount)

        tokens = [token.get_secret_value() for token in self.settings.admin.tokens]
        pepper = self.settings.auth.pepper
        assert pepper is not None  # checked in __init__
        self._audit = await open_audit_log(self.settings.auth.key_store)
        self._admin = admin_app(
            self.auth.store,
            self._audit,
            pepper.get_secret_value().encode(),
            tokens,
            self._admin_jwt_check(),
            usage=self._usage_store,
            pools=self.pools,
        )

    async def readiness(self) -> dict[str, str]:
        """What /readyz reports: each store the gateway needs, and each model's replicas.

        States only ("ok", "unavailable"); why a check fails goes to the log, which
        may name hosts the callers of /readyz must not learn."""
        checks: dict[str, str] = {}
        try:
            await self.auth.store.get(PROBE_KEY_ID)
            checks["key_store"] = OK
        except (KeyStoreError, RuntimeError) as exc:
            logger.warning("readiness: the key store is unavailable: %s", exc)
            checks["key_store"] = UNAVAILABLE
        ping = getattr(self.limiter, "ping", None)
        if ping is not None:
            state = await ping()
            if state != OK:
                logger.warning("readiness: the limits backend is %s", state)
            checks["limits"] = OK if state == OK else UNAVAILABLE
        for pool in self.pools.configured():
            usable = any(replica.usable for replica in pool.replicas)
            checks[f"model {pool.model}"] = OK if usable else UNAVAILABLE
        return checks

    def record(
        self, principal: str, tenant: str, model: str, usage: TokenUsage, *, estimated: bool
    ) -> None:
        """Usage of one answered request, batched into the usage store."""
        if self._recorder is not None:
            self._recorder.record(principal, tenant, model, usage, estimated=estimated)

    def _admin_jwt_check(self) -> Callable[[str], Awaitable[str | None]] | None:
        claim = self.settings.admin.jwt_claim
        if claim is None:
            return None

        async def check(token: str) -> str | None:
            return await self.auth.admin_subject(token, claim)

        return check


def create_app(settings: Settings) -> Gateway:
    return Gateway(settings)
