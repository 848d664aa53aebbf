"""TLS contexts, built once at start: the listener's and the upstream client's."""

from __future__ import annotations

import ssl

from gateway.settings import TLSSettings, UpstreamTLSSettings


def server_context(settings: TLSSettings) -> ssl.SSLContext:
    """HTTPS for clients, TLS 1.2 or newer; client certificates are required when a CA is set."""
    if settings.certfile is None or settings.keyfile is None:
        raise ValueError("server TLS needs certfile and keyfile")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.certfile, settings.keyfile)
    if settings.client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=settings.client_ca)
    return context


def upstream_context(settings: UpstreamTLSSettings) -> ssl.SSLContext:
    """What the gateway trusts when a replica URL is https://."""
    context = ssl.create_default_context(
        cafile=str(settings.ca_bundle) if settings.ca_bundle else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not settings.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
