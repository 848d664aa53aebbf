"""`make bench`: the same load direct to the simulator and through the gateway, in one run.

The gateway is pinned to core 0; the simulator and this load generator share
core 1. Each scenario runs twice (direct, then through a fresh gateway) and is
reported as ratios and added latencies, plus the gateway's CPU and peak RSS.

    python bench/run.py [--scenarios S1,S3] [--scale 0.25] [--trace-ratio 0.01]
                        [--upstream-client native]

With --trace-ratio the gateway traces (tracing.sample_ratio) and exports to a
sink that discards what it gets (bench/trace_sink.py), started for each pass.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import uvloop
import yaml

from gateway.keys.records import KeyRecord, new_key
from gateway.keys.sqlite import SqliteKeyStore
from gateway.principal import Limits

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import Load, request_body, run_load
from report import PassResult, budget_lines, compare, summarize, table

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MODEL = "bench-model"
PEPPER = "bench-pepper-not-a-secret-0123456789abcdef"
GATEWAY_CORE, LOAD_CORE = "0", "1"
TASKSET = shutil.which("taskset") or "/usr/bin/taskset"


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    stream: bool
    tokens: int
    requests: int
    concurrency: int
    ttft_ms: float
    itl_ms: float
    ramp_s: float = 0.0
    # Every round of `concurrency` requests leaves at once (loadgen.Load.burst).
    burst: bool = False


SCENARIOS = [
    Scenario("S1", "realistic streams", True, 128, 1024, 256, 50, 40, ramp_s=2.0),
    Scenario("S2", "streaming saturation", True, 512, 256, 64, 0, 0),
    Scenario("S3", "non-streaming saturation", False, 16, 6000, 64, 0, 0),
    Scenario("S4", "sequential", False, 4, 500, 1, 0, 0),
    Scenario("S5", "many open streams", True, 10, 2000, 2000, 0, 1000),
    Scenario("S6", "burst of streams", True, 16, 1024, 256, 50, 20, burst=True),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(command: list[str], core: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [TASKSET, "-c", core, sys.executable, *command],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent,
        )


def gateway_command(variant: str, config: Path) -> list[str]:
    if variant == "default":
        return ["-m", "gateway", "serve", "--config", str(config)]
    return [str(Path(__file__).resolve().parent / "serve_variant.py"), variant, str(config)]


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a bench process exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def process_tree(pid: int) -> list[int]:
    """The pid and its descendants: some servers (granian) work in a child process."""
    tree, index = [pid], 0
    while index < len(tree):
        for task in Path(f"/proc/{tree[index]}/task").glob("*"):
            children = (task / "children").read_text().split()
            tree.extend(int(child) for child in children)
        index += 1
    return tree


def cpu_seconds(pid: int) -> float:
    total = 0
    for member in process_tree(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    total = 0
    for member in process_tree(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total / 1024


def gateway_config(
    port: int, sim_url: str, log_dir: Path, tracing: dict[str, object] | None = None
) -> tuple[Path, str]:
    """The gateway as users run it: every part that exists is on. Returns an API key.

    TRACING: the gateway's `tracing` settings, if it traces."""
    key_db = log_dir / f"keys-{port}.db"
    config: dict[str, object] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "models": [{"name": MODEL, "replicas": [{"url": sim_url}]}],
        "auth": {"pepper": PEPPER, "key_store": {"sqlite_path": str(key_db)}},
        # Limits far above the load: every request is admitted, and pays for the checks.
        "limits": {"tenants": {"bench": {"requests_per_minute": 10**9}}},
        "log": {"level": "info", "format": "json"},
    }
    if tracing is not None:
        config["tracing"] = tracing
    path = log_dir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, bench_key(key_db)


def bench_key(key_db: Path) -> str:
    """A key with limits far above any load, stored in the SQLite file KEY_DB."""
    limits = Limits(requests_per_minute=10**9, tokens_per_minute=10**12, concurrent_requests=10**6)
    key, record = new_key(
        PEPPER.encode(), tenant="bench", name="bench", created_at=datetime.now(UTC), limits=limits
    )
    uvloop.run(_store(key_db, record))
    return key.token


async def _store(path: Path, record: KeyRecord) -> None:
    store = await SqliteKeyStore.open(path)
    try:
        await store.create(record)
    finally:
        await store.close()


def measure(load: Load, pid: int | None) -> PassResult:
    size = load.concurrency if load.burst else min(50, load.requests)
    # A burst's warm-up opens every client's connection, so the burst measures requests,
    # not connection set-up.
    warm = replace(load, requests=size, concurrency=min(size, load.concurrency), ramp_s=0.0)
    # The warm-up opens connections and fills caches; it is not measured.
    uvloop.run(run_load(warm))
    gateway_cpu = cpu_seconds(pid) if pid else 0.0
    client_cpu = time.process_time()
    samples, wall = uvloop.run(run_load(load))
    client_cpu = time.process_time() - client_cpu
    gateway_cpu = (cpu_seconds(pid) - gateway_cpu) if pid else 0.0
    rss = peak_rss_mb(pid) if pid else 0.0
    return summarize(samples, wall, client_cpu, gateway_cpu, rss)


def load_for(
    scenario: Scenario, url: str, body: bytes, requests: int, api_key: str | None = None
) -> Load:
    path = "/v1/chat/completions"
    return Load(
        url,
        path,
        body,
        scenario.stream,
        requests,
        scenario.concurrency,
        scenario.ramp_s,
        api_key,
        burst=scenario.burst,
    )


@contextmanager
def trace_sink(ratio: float | None, work: Path, name: str) -> Iterator[dict[str, object] | None]:
    """The gateway's tracing settings at RATIO, exporting to a sink; None: no tracing."""
    if ratio is None:
        yield None
        return
    port = free_port()
    log = work / f"{name}-trace-sink.log"
    sink = start(
        [str(Path(__file__).resolve().parent / "trace_sink.py"), str(port)], LOAD_CORE, log
    )
    try:
        url = f"http://127.0.0.1:{port}/v1/traces"
        wait_ready(url, sink)
        yield {"enabled": True, "endpoint": url, "sample_ratio": ratio}
    finally:
        stop(sink)
        print(f"  {log.read_text().strip()}", flush=True)


def run_scenario(
    scenario: Scenario, scale: float, work: Path, variant: str, trace_ratio: float | None = None
) -> dict[str, object]:
    requests = max(scenario.concurrency, int(scenario.requests * scale))
    if scenario.burst:
        requests -= requests % scenario.concurrency
    sim_port, gw_port = free_port(), free_port()
    sim_args = ["simulate", "--port", str(sim_port), "--model", MODEL]
    sim_args += ["--ttft-ms", str(scenario.ttft_ms), "--itl-ms", str(scenario.itl_ms)]
    sim_args += ["--max-num-seqs", "100000"]
    sim = start(["-m", "gateway", *sim_args], LOAD_CORE, work / f"{scenario.name}-sim.log")
    body = request_body(MODEL, scenario.tokens, scenario.stream)
    try:
        sim_url = f"http://127.0.0.1:{sim_port}"
        wait_ready(f"{sim_url}/health", sim)
        direct = measure(load_for(scenario, sim_url, body, requests), None)
        with trace_sink(trace_ratio, work, scenario.name) as tracing:
            config, api_key = gateway_config(gw_port, sim_url, work, tracing)
            gw_log = work / f"{scenario.name}-gw.log"
            gateway = start(gateway_command(variant, config), GATEWAY_CORE, gw_log)
            try:
                gw_url = f"http://127.0.0.1:{gw_port}"
                wait_ready(f"{gw_url}/v1/models", gateway)
                through = measure(load_for(scenario, gw_url, body, requests, api_key), gateway.pid)
            finally:
                stop(gateway)
    finally:
        stop(sim)
    return {
        "scenario": asdict(scenario) | {"requests": requests},
        "direct": asdict(direct),
        "gateway": asdict(through),
        "compare": compare(direct, through),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply request counts")
    parser.add_argument(
        "--variant", default="default", help="server stack (see bench/serve_variant.py)"
    )
    parser.add_argument(
        "--trace-ratio",
        type=float,
        default=None,
        help="trace through the gateway at this sample ratio (0-1), exported to a sink",
    )
    parser.add_argument(
        "--upstream-client",
        choices=("aiohttp", "native"),
        default=None,
        help="the gateway's upstream_client (its default when not given)",
    )
    args = parser.parse_args()
    if args.upstream_client is not None:
        # The gateway reads VGW_* overrides from the environment it inherits.
        os.environ["VGW_UPSTREAM_CLIENT"] = args.upstream_client
    chosen = [s for s in SCENARIOS if s.name in args.scenarios.split(",")]
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    results = []
    with tempfile.TemporaryDirectory(prefix="vgw-bench-") as tmp:
        for scenario in chosen:
            print(f"running {scenario.name} ({scenario.title}) ...", flush=True)
            results.append(
                run_scenario(scenario, args.scale, Path(tmp), args.variant, args.trace_ratio)
            )
    stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    document = {
        "date": stamp,
        "variant": args.variant,
        "trace_ratio": args.trace_ratio,
        "upstream_client": args.upstream_client,
        "python": sys.version.split()[0],
        "results": results,
    }
    for name in (f"{stamp}.json", "latest.json"):
        (RESULTS / name).write_text(json.dumps(document, indent=2))
    text = table(results) + "\n\n" + "\n".join(budget_lines(results))
    if args.trace_ratio is not None:
        text = f"Gateway traced at sample ratio {args.trace_ratio}.\n\n{text}"
    (RESULTS / "latest.md").write_text(f"Run {stamp}\n\n{text}\n")
    print(text)
    print(f"\nwritten to {RESULTS / (stamp + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
