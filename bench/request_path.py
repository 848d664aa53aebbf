"""CPU per call of the gateway's own request-path parts, without a server or a network.

    python bench/request_path.py [--checkout PATH] [--parts admission,auth] [--calls 42000]

Each part runs on uvloop as the gateway calls it for one of S3's requests (the
bench key's limits, a 200 with usage); the figure is the lowest of 7 runs of
calls/7 calls, in µs of this process's CPU (`time.process_time`), so other
work on the machine inflates it less than a wall clock would. --checkout
imports the gateway from another tree (say, a `git worktree` of an older
commit): run both, alternated, and compare ratios.
"""

# The gateway is imported inside each part, once --checkout has chosen which tree it is.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
import yaml

Part = Callable[[int], Awaitable[None]]
MODEL = "sim-model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkout", type=Path, help="import the gateway from this tree")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--calls", type=int, default=42_000)
    args = parser.parse_args()
    if args.checkout is not None:
        sys.path.insert(0, str(args.checkout.resolve()))
    for name in args.parts.split(","):
        print(f"{name:12s} {uvloop.run(_lowest(PARTS[name], args.calls)):7.2f} µs per call")


async def _lowest(make: Callable[[], Awaitable[Part]], calls: int) -> float:
    part = await make()
    await part(200)  # caches, first series
    size, best = calls // 7, float("inf")
    for _ in range(7):
        started = time.process_time()
        await part(size)
        best = min(best, (time.process_time() - started) / size * 1e6)
    return best


def _principal() -> Any:
    from gateway.principal import Limits, Principal

    limits = Limits(requests_per_minute=10**9, tokens_per_minute=10**12, concurrent_requests=10**6)
    return Principal(id="abcdefghijklmnop", tenant="bench", kind="key", limits=limits)


async def admission() -> Part:
    """Quotas and limits: admit, then settle to the real usage (the memory backends)."""
    from gateway.limits.admission import Admissions
    from gateway.limits.memory import MemoryRateLimiter
    from gateway.limits.quota_admission import QuotaAdmissions
    from gateway.limits.quota_memory import MemoryQuotas
    from gateway.limits.quota_metrics import QuotaMetrics
    from gateway.metrics import Metrics
    from gateway.principal import Limits
    from gateway.proxy.admission_gate import AdmissionGate
    from gateway.proxy.request_edit import EditedRequest

    metrics, principal = Metrics(), _principal()
    tenants = {"bench": Limits(requests_per_minute=10**9)}
    limits = Admissions(MemoryRateLimiter(), metrics, tenants=tenants, fail_open=False)
    quotas = QuotaAdmissions(
        MemoryQuotas(),
        QuotaMetrics(metrics),
        tenants={},
        prices={},
        soft_threshold=0.8,
        fail_open=False,
    )
    gate, edited = AdmissionGate(limits, quotas), EditedRequest(b"{}", False, 30, 16)

    async def run(calls: int) -> None:
        for _ in range(calls):
            admitted = await gate.admit(principal, MODEL, edited)
            await gate.finish(admitted, MODEL, 40, (30, 10))

    return run


async def auth() -> Part:
    """An API key from its header to its principal (a cached record)."""
    from gateway.auth.credentials import Authenticator
    from gateway.auth.key_cache import KeyCache
    from gateway.keys.records import new_key
    from gateway.keys.store import MemoryKeyStore

    pepper, store = b"p" * 32, MemoryKeyStore()
    key, record = new_key(pepper, tenant="bench", name="bench", created_at=datetime.now(UTC))
    await store.create(record)
    header = f"Bearer {key.token}".encode()
    authenticator = Authenticator(KeyCache(store), pepper, None)

    async def run(calls: int) -> None:
        for _ in range(calls):
            await authenticator.authenticate(header)

    return run


async def record() -> Part:
    """The request record around an answered request: id, metrics, access-log line."""
    from gateway.access_log import AccessLog
    from gateway.metrics import Metrics
    from gateway.middleware.context import RequestContextMiddleware
    from gateway.middleware.errors import ErrorBoundary
    from gateway.request_record import Outcome, context_of
    from gateway.settings import LogSettings
    from gateway.usage.records import TokenUsage

    metrics, principal = Metrics(), _principal()
    log = AccessLog(io.StringIO(), LogSettings(level="info", format="json"))
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"771")],
    }

    async def answer(scope: Any, receive: Any, send: Any) -> None:
        context = context_of(scope)
        context.route, context.model, context.known_model = "/v1/chat/completions", MODEL, True
        context.principal, context.replica = principal, "http://127.0.0.1:8000"
        outcome = context.outcome = Outcome(200, 771, usage=TokenUsage(20, 16), chunks=1)
        outcome.upstream_sent_at = outcome.first_byte_at = time.perf_counter()
        await send({**start, "headers": list(start["headers"])})
        await send({"type": "http.response.body", "body": b"x" * 771, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    app = RequestContextMiddleware(ErrorBoundary(answer, metrics), log, metrics)
    headers = [(b"content-type", b"application/json"), (b"authorization", b"Bearer x")]

    async def ignore(message: Any) -> None:
        return None

    async def run(calls: int) -> None:
        for _ in range(calls):
            scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions"}
            await app({**scope, "headers": headers}, ignore, ignore)
            log._lines.clear()  # never written: the stream is not what is measured

    return run


async def usage() -> Part:
    """The usage recorder's count of one request."""
    from gateway.usage.recorder import UsageRecorder
    from gateway.usage.records import TokenUsage

    recorder, tokens = UsageRecorder(), TokenUsage(20, 16)

    async def run(calls: int) -> None:
        for _ in range(calls):
            recorder.record("abcdefghijklmnop", "bench", MODEL, tokens, estimated=False)

    return run


async def meters() -> Part:
    """The upstream metrics of one answered attempt."""
    from gateway.metrics import Metrics
    from gateway.proxy.upstream_meters import UpstreamMeters
    from gateway.request_record import Outcome
    from gateway.settings import load_settings
    from gateway.upstreams.setup import pools_from_settings

    config = Path(tempfile.mkdtemp()) / "gateway.yaml"
    models = [{"name": MODEL, "replicas": [{"url": "http://127.0.0.1:8000"}]}]
    config.write_text(yaml.safe_dump({"models": models, "auth": {"pepper": "p" * 40}}))
    pool = pools_from_settings(load_settings(config, {})).get(MODEL)
    upstream, outcome = UpstreamMeters(Metrics(), 3), Outcome(200)
    outcome.upstream_sent_at, outcome.upstream_first_byte_at = 1.0, 1.002

    async def run(calls: int) -> None:
        for _ in range(calls):
            upstream.count(pool, pool.replicas[0], outcome, None)

    return run


async def interrupter() -> Part:
    """The forwarder's interrupter: made, its limit moved once, stopped."""
    from gateway.proxy.interrupter import Interrupter

    async def receive() -> dict[str, Any]:
        return {}

    async def run(calls: int) -> None:
        for _ in range(calls):
            watch = Interrupter(receive, 30.0, 30.0)
            watch.set_limit(60.0)
            watch.stop()

    return run


PARTS: dict[str, Callable[[], Awaitable[Part]]] = {
    "admission": admission,
    "auth": auth,
    "record": record,
    "usage": usage,
    "meters": meters,
    "interrupter": interrupter,
}

if __name__ == "__main__":
    main()
