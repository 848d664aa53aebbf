"""The request tracer of a gateway process, built from its settings, or None when off."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.settings import TracingSettings

if TYPE_CHECKING:
    from gateway.tracing.spans import RequestTracer


def request_tracer(settings: TracingSettings) -> RequestTracer | None:
    """None when tracing is off: then nothing imports OpenTelemetry, and the request path
    only checks for None. The settings already checked that the packages are installed."""
    if not settings.enabled:
        return None
    # Local imports: the OpenTelemetry SDK loads only in a gateway that traces.
    from gateway.tracing.export import TraceExport  # noqa: PLC0415
    from gateway.tracing.spans import RequestTracer  # noqa: PLC0415

    export = TraceExport(settings)
    return RequestTracer(
        export, trust_incoming=settings.incoming == "trust", key_id=settings.key_id
    )
