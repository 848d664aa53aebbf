"""The tracer provider and its OTLP batch exporter, opened and shut down by the lifespan.

No global provider is installed: each gateway app has its own, so two apps in
one process (the tests) never share spans. The exporter's headers may hold a
collector's credentials; they go to the exporter only, never to a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Tracer

from gateway.settings import TracingSettings

INSTRUMENTATION = "vllm-gateway"
# Past the exporter's own timeout: how long shutdown waits for its flush to finish.
SHUTDOWN_GRACE = 1.0


class TraceExport:
    def __init__(self, settings: TracingSettings) -> None:
        self._settings = settings
        self._provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
            resource=Resource({"service.name": settings.service_name}),
            shutdown_on_exit=False,
        )
        self.tracer: Tracer = self._provider.get_tracer(INSTRUMENTATION)
        self._processor: BatchSpanProcessor | None = None

    def open(self) -> None:
        """Start the exporter's thread; spans ended before this are dropped."""
        timeout = self._settings.export_timeout
        self._processor = BatchSpanProcessor(
            _exporter(self._settings), export_timeout_millis=timeout * 1000
        )
        self._provider.add_span_processor(self._processor)

    async def close(self) -> None:
        """Flush what is queued and stop the exporter, waiting no longer than the export
        timeout (plus a grace second): a collector that is down cannot hold shutdown."""
        if self._processor is None:
            return
        self._processor = None
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def shut_down() -> None:
            try:
                self._provider.shutdown()
            finally:
                # The loop may be gone if shutdown outlived the wait below.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(done.set)

        # A daemon thread, not the loop's executor: the loop's close would wait for it.
        threading.Thread(target=shut_down, name="trace-export-shutdown", daemon=True).start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settings.export_timeout + SHUTDOWN_GRACE):
                await done.wait()


def _exporter(settings: TracingSettings) -> SpanExporter:
    headers = {name: value.get_secret_value() for name, value in settings.headers.items()}
    if settings.protocol == "grpc":
        # The settings checked this optional exporter is installed.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,unused-ignore] # noqa: PLC0415
            OTLPSpanExporter as GrpcExporter,
        )

        exporter: SpanExporter = GrpcExporter(
            endpoint=settings.endpoint, headers=headers, timeout=settings.export_timeout
        )
        return exporter
    return OTLPSpanExporter(
        endpoint=settings.endpoint, headers=headers, timeout=settings.export_timeout
    )
