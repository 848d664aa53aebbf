"""`create_app(settings)`: the gateway's ASGI app, its middleware order and its lifespan."""

from __future__ import annotations

import gc
import logging
import sys
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from gateway.access_log import AccessLog
from gateway.asgi import ASGIApp, Receive, Scope, Send, send_bytes
from gateway.auth.service import AuthService
from gateway.drain import Drain
from gateway.errors import error_body
from gateway.limits.quota_setup import quota_admissions, quota_backend
from gateway.limits.setup import admissions, limiter_backend
from gateway.metrics import Metrics
from gateway.middleware.context import RequestContextMiddleware
from gateway.middleware.errors import ErrorBoundary
from gateway.probes import METRICS, Probes, Trust
from gateway.proxy.handler import ProxyApp
from gateway.proxy.setup import proxy_options, response_store, upstream_client
from gateway.readiness import ReadinessChecks
from gateway.settings import Settings
from gateway.tenants.directory import TenantDirectory
from gateway.tenants.open import open_tenant_store
from gateway.tenants.seeds import seed_records
from gateway.tenants.store import TenantStore
from gateway.tracing.setup import request_tracer
from gateway.upstreams.discovery import Discovery
from gateway.upstreams.monitor import ReplicaMonitor
from gateway.upstreams.scrape_targets import ADMIN_TARGETS_PATH, target_groups_json
from gateway.upstreams.setup import discovery_sources, pools_from_settings
from gateway.usage.open import open_usage_store
from gateway.usage.recorder import UsageRecorder
from gateway.usage.store import UsageStore

if TYPE_CHECKING:
    from gateway.tracing.spans import RequestTracer

logger = logging.getLogger("gateway")
ADMIN_PREFIX = "/admin"


def build_stack(
    proxy: ASGIApp, access_log: AccessLog, metrics: Metrics, tracer: RequestTracer | None = None
) -> ASGIApp:
    """The request path, outermost first:

    1. dispatcher (`Gateway.__call__`): /admin, the probes, or this stack;
    2. request record (`RequestContextMiddleware`): the request id, the access log
       line, the request metrics and the request's trace span, so every response,
       the error boundary's included, carries the id and is logged exactly once;
    3. error boundary (`ErrorBoundary`): any error becomes an OpenAI-shaped answer;
    4. then, in `ProxyApp`: the route allowlist, auth, the request contract,
       admission (the limits), and forwarding to a replica.
    """
    return RequestContextMiddleware(ErrorBoundary(proxy, metrics), access_log, metrics, tracer)


class Gateway:
    """The ASGI app: the lifespan opens and closes every shared resource."""

    def __init__(self, settings: Settings, *, metrics_multiprocess: bool = False) -> None:
        if settings.auth.pepper is None:
            raise ValueError("auth.pepper must be set before the app is built")
        self.settings = settings
        self.upstream = upstream_client(settings)
        self.pools = pools_from_settings(settings)
        self.access_log = AccessLog(sys.stderr, settings.log)
        self.metrics = Metrics(
            key_label=settings.metrics.key_label, multiprocess=metrics_multiprocess
        )
        # The settings' tenants now; the store's too once the lifespan has opened it.
        self.tenants = TenantDirectory(seed_records(settings))
        self.auth = AuthService(
            settings.auth,
            settings.auth.pepper.get_secret_value().encode(),
            on_store_error=self.metrics.key_store_error,
            tenants=self.tenants,
        )
        self.limiter = limiter_backend(settings, self.metrics)
        self.admissions = admissions(settings, self.limiter, self.metrics, self.tenants.limits)
        self.quotas = quota_admissions(
            settings, quota_backend(settings), self.metrics, self.tenants.quotas
        )
        # Writes to the usage store once the lifespan has opened it, beside the keys.
        self.recorder = UsageRecorder()
        # Set on SIGTERM by the server (gateway/cli/shutdown.py); read by the proxy,
        # the probes and each connection.
        self.drain = Drain()
        # None when tracing is off: then OpenTelemetry is never imported.
        self.tracer = request_tracer(settings.tracing)
        self.monitor, self.discovery = self._watch_upstreams(settings)
        # Where each created Response lives (gateway.proxy.stored_responses).
        self.responses = response_store(settings)
        proxy = ProxyApp(
            self.pools,
            self.upstream,
            self.auth,
            limits=self.admissions,
            quotas=self.quotas,
            usage=self.recorder,
            options=proxy_options(settings, self.tenants.max_batch, self.tenants.max_tokens),
            metrics=self.metrics,
            tracer=self.tracer,
            drain=self.drain,
            responses=self.responses,
        )
        self._http = build_stack(proxy, self.access_log, self.metrics, self.tracer)
        self.readiness = ReadinessChecks(self.auth, self.limiter, self.pools)
        self.probes = self._probes(settings)
        # Built in the lifespan, once the key store is open; nothing at all without admins.
        self._admin: ASGIApp | None = None
        self._admin_enabled = bool(settings.admin.tokens or settings.admin.jwt_claim)
        # With a listener of its own, the admin API is not reachable on the client one.
        self._admin_here = self._admin_enabled and settings.admin.listen is None
        self._resources = AsyncExitStack()

    def _watch_upstreams(self, settings: Settings) -> tuple[ReplicaMonitor, Discovery]:
        """Health checks and load scrapes of the replicas, and their discovery."""
        upstreams = settings.upstreams
        watch_load = (
            upstreams.load.picking == "load_aware" or upstreams.load.shed_waiting_above is not None
        )
        monitor = ReplicaMonitor(
            self.pools,
            lambda: self.upstream.session,
            upstreams,
            watch_load=watch_load,
            replica_up=self.metrics.replica_up,
        )
        discovery = Discovery(
            self.pools,
            discovery_sources(settings),
            interval=upstreams.discovery_interval,
            joined=monitor.check_all,
        )
        return monitor, discovery

    def _probes(self, settings: Settings) -> Probes:
        token = settings.metrics.token
        trust = Trust(
            token.get_secret_value() if token else None,
            loopback=settings.metrics.trust_loopback,
        )
        return Probes(
            self.metrics,
            self.readiness,
            trust,
            serve_metrics=settings.metrics.listener == "main",
            drain=self.drain,
            models_required=settings.probes.ready_requires_models,
        )

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
                    await self.open()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    raise
                # What start-up built lives as long as the process: keep it out of the
                # collector's full passes, which otherwise walk it again and again.
                gc.freeze()
                # Reference counting frees a request's objects; the collector is for
                # cycles. At its default (a pass per 700 allocations) it ran several
                # times per request with thousands of streams open, each pass walking
                # them all: S5 measured 15-20 % less CPU per request with this.
                gc.set_threshold(20_000, 20, 20)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def open(self) -> None:
        """Open every shared resource, each beside its close; a start that fails part-way
        closes what it had opened, last first, before the error goes on."""
        async with AsyncExitStack() as stack:
            stack.callback(self.access_log.flush)
            stack.push_async_callback(self.limiter.close)
            stack.push_async_callback(self.quotas.backend.close)
            if self.tracer is not None:
                # Closed after everything else: spans of requests still ending get out.
                self.tracer.export.open()
                stack.push_async_callback(self.tracer.export.close)
            await self.upstream.open()
            stack.push_async_callback(self.upstream.close)
            stack.push_async_callback(self.responses.close)
            self.monitor.start()
            stack.push_async_callback(self.monitor.stop)
            self.discovery.start()
            stack.push_async_callback(self.discovery.stop)
            await self.auth.open()
            stack.push_async_callback(self.auth.close)
            tenant_store = await open_tenant_store(self.settings.auth.key_store)
            stack.push_async_callback(tenant_store.close)
            await self.tenants.open(tenant_store)
            stack.push_async_callback(self.tenants.close)
            usage_store = await open_usage_store(self.settings.auth.key_store)
            stack.push_async_callback(usage_store.close)
            self.recorder.start(usage_store)
            stack.push_async_callback(self.recorder.stop)
            if self._admin_enabled:
                await self._open_admin(stack, usage_store, tenant_store)
            # Opened: kept open until `close`.
            self._resources = stack.pop_all()

    async def close(self) -> None:
        await self._resources.aclose()

    async def admin(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The admin API's entry, for /admin on this app or for its own listener."""
        if scope["type"] != "http":
            return
        if self.settings.metrics.listener == "admin":
            # What /metrics shows is open on this listener; so is the list of replicas
            # Prometheus scrapes beside it (their URLs are /metrics labels too).
            if scope["path"] == METRICS:
                await self.probes.metrics(send)
                return
            if scope["path"] == ADMIN_TARGETS_PATH and scope["method"] in ("GET", "HEAD"):
                await send_bytes(send, 200, target_groups_json(self.pools))
                return
        if self._admin is None:
            body = error_body("The gateway is starting.", "server_error", None, None)
            await send_bytes(send, 503, body, [(b"retry-after", b"1")])
            return
        await self._admin(scope, receive, send)

    async def _open_admin(
        self, stack: AsyncExitStack, usage_store: UsageStore, tenant_store: TenantStore
    ) -> None:
        from gateway.admin.mount import (  # noqa: PLC0415 (see mount)
            admin_app,
            admin_jwt_check,
            open_audit_log,
            sign_in_guard,
            ui_sessions,
        )

        settings = self.settings
        tokens = [token.get_secret_value() for token in settings.admin.tokens]
        pepper = settings.auth.pepper
        assert pepper is not None  # checked in __init__
        audit = await open_audit_log(settings.auth.key_store)
        stack.push_async_callback(audit.close)
        scrape_token = settings.metrics.token
        self._admin = admin_app(
            self.auth.store,
            audit,
            pepper.get_secret_value().encode(),
            tokens,
            admin_jwt_check(self.auth, settings.admin.jwt_claim),
            usage=usage_store,
            pools=self.pools,
            quotas=self.quotas,
            tenants=(tenant_store, self.tenants),
            scrape_token=None if scrape_token is None else scrape_token.get_secret_value(),
            sessions=ui_sessions(settings.admin.ui, settings.workers),
            guard=sign_in_guard(settings.admin.failed_sign_ins),
            on_refusal=self.metrics.admin_refusal,
        )


def create_app(settings: Settings, *, metrics_multiprocess: bool = False) -> Gateway:
    """METRICS_MULTIPROCESS: this process is one of several workers sharing /metrics."""
    return Gateway(settings, metrics_multiprocess=metrics_multiprocess)
