"""What each upstream attempt tells: its metrics, and the pool told how it went (the
pool ejects a replica after enough failed requests in a row)."""

from __future__ import annotations

import logging

from gateway.errors import UpstreamError
from gateway.metrics import Metrics, replica_label
from gateway.proxy.forward import StreamMeters, failure_kind
from gateway.request_record import Outcome
from gateway.upstreams.pool import Pool, Replica

logger = logging.getLogger("gateway.proxy")


class UpstreamMeters:
    def __init__(self, metrics: Metrics, eject_after: int) -> None:
        self._metrics = metrics
        self._eject_after = eject_after
        self._streams: dict[str, StreamMeters] = {}

    def count(
        self, pool: Pool, replica: Replica, outcome: Outcome, error: UpstreamError | None
    ) -> None:
        """Count the attempt in the upstream metrics, and tell the pool how it went."""
        kind = failure_kind(outcome, error)
        label = replica_label(replica.url)
        metrics = self._metrics
        child = metrics.child
        child(metrics.upstream_requests, pool.model, label, "error" if kind else "ok").inc()
        if outcome.upstream_first_byte_at:
            latency = outcome.upstream_first_byte_at - outcome.upstream_sent_at
            child(metrics.upstream_latency, pool.model, label).observe(latency)
        if kind is None or kind == "busy":
            # A full queue is load, not a fault.
            replica.request_succeeded()
            if kind:
                child(metrics.upstream_errors, pool.model, label, kind).inc()
            return
        child(metrics.upstream_errors, pool.model, label, kind).inc()
        if pool.request_failed(replica, self._eject_after):
            logger.warning(
                "replica %s ejected after %d failed requests in a row; health checks "
                "will let it back",
                label,
                replica.failures,
            )

    def affinity(self, model: str, first: bool) -> None:
        """A conversation's pick: its first choice, or the next in its ranking."""
        metrics = self._metrics
        metrics.child(metrics.affinity_picks, model, "first" if first else "next").inc()

    def streams(self, model: str) -> StreamMeters:
        """The stream meters of MODEL: inter-token gaps and open streams."""
        meters = self._streams.get(model)
        if meters is None:
            streams = self._metrics.open_streams.labels(model)
            meters = self._streams[model] = StreamMeters(
                self._metrics.inter_token.labels(model).observe, streams.inc, streams.dec
            )
        return meters
