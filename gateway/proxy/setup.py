"""The proxy of a gateway process, built from its settings."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.proxy.affinity import Affinity
from gateway.proxy.apis import ModelApis
from gateway.proxy.handler import ProxyOptions
from gateway.proxy.response_store import MemoryResponseStore, ResponseStore
from gateway.proxy.upstream import Timeouts, UpstreamClient
from gateway.settings import Settings
from gateway.tls import upstream_context


def upstream_client(settings: Settings) -> UpstreamClient:
    """The one upstream session of the process; opened and closed by the lifespan."""
    timeouts = Timeouts(
        connect=settings.timeouts.connect,
        first_byte=settings.timeouts.first_byte,
        idle=settings.timeouts.idle,
        client_write=settings.timeouts.client_write,
    )
    return UpstreamClient(
        timeouts,
        upstream_context(settings.upstream_tls),
        settings.upstream_max_connections,
        settings.upstream_client,
    )


def proxy_options(
    settings: Settings,
    tenant_max_batch: Mapping[str, int] | None = None,
    tenant_max_tokens: Mapping[str, int] | None = None,
) -> ProxyOptions:
    """The TENANT_ mappings are live views of the tenant directory; else the settings'."""
    upstreams, limits = settings.upstreams, settings.limits
    return ProxyOptions(
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        apis=ModelApis.of((model.name, model.apis) for model in settings.models),
        refuse_over_cap=limits.max_tokens_policy == "refuse",
        default_reserve=limits.default_completion_reserve,
        max_batch=limits.max_batch,
        tenant_max_batch={
            tenant: given.max_batch
            for tenant, given in limits.tenants.items()
            if given.max_batch is not None
        }
        if tenant_max_batch is None
        else tenant_max_batch,
        tenant_max_tokens={
            tenant: given.max_tokens
            for tenant, given in limits.tenants.items()
            if given.max_tokens is not None
        }
        if tenant_max_tokens is None
        else tenant_max_tokens,
        retries=upstreams.retries,
        eject_after=upstreams.health.eject_after,
        shed_waiting_above=upstreams.load.shed_waiting_above,
        shed_status=upstreams.load.shed_status,
        shed_retry_after=upstreams.load.shed_retry_after,
        aliases=settings.aliases,
        affinity=None
        if upstreams.affinity.by == "none"
        else Affinity(upstreams.affinity.prefix_chars, upstreams.affinity.header),
    )


def response_store(settings: Settings) -> ResponseStore:
    """Where created responses are remembered: beside the keys in Redis (shared by every
    gateway replica), else in this process."""
    given, keys = settings.responses, settings.auth.key_store
    if keys.backend == "redis" and keys.redis_url is not None:
        from gateway.proxy.response_store_redis import RedisResponseStore  # noqa: PLC0415

        return RedisResponseStore.connect(keys.redis_url.get_secret_value(), ttl_s=given.store_ttl)
    return MemoryResponseStore(ttl_s=given.store_ttl, max_entries=given.memory_max_entries)
