"""Where a request's CPU goes: the gateway under a scenario's load, sampled by py-spy.

    python bench/profile.py [--scenario S3] [--scale 0.5] [--client native] [--rate 250]

The gateway runs as `make bench` runs it (pinned to core 0, every part on), and
`py-spy record` attaches to it once it is up; the load generator, the simulator
and py-spy share core 1. Each
sample's stack is charged to one component, the innermost frame that belongs
to one (so time in asyncio under aiohttp is aiohttp's); samples in no
component are the event loop's own (epoll, socket reads and writes, callbacks).
Prints each component's share and its µs per request, from the gateway's CPU.
`pip install py-spy` first; attaching needs the right to ptrace the gateway.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import request_body
from run import (
    GATEWAY_CORE,
    LOAD_CORE,
    MODEL,
    SCENARIOS,
    TASKSET,
    free_port,
    gateway_command,
    gateway_config,
    load_for,
    measure,
    start,
    stop,
    wait_ready,
)

# (component, path fragments of its frames); the first that matches a frame wins.
COMPONENTS = [
    (
        "SQLite stores handed to a thread (usage flush, tenant version)",
        ("asyncio/threads.py", "gateway/sqlite_file"),
    ),
    ("upstream client (aiohttp)", ("/aiohttp/", "/yarl/", "/multidict/")),
    ("upstream client (native)", ("gateway/proxy/h1client", "gateway/proxy/h1pool")),
    ("server parse/send (uvicorn, httptools, edge limits)", ("/uvicorn/", "gateway/edge")),
    ("authentication", ("gateway/auth/", "gateway/keys/")),
    (
        "limits, quotas, usage reading",
        ("gateway/limits/", "gateway/usage/", "_usage", "usage_scan", "admission_gate"),
    ),
    ("metrics", ("gateway/metrics", "/prometheus_client/")),
    (
        "request record, access log",
        ("gateway/access_log", "gateway/request_record", "gateway/middleware/context"),
    ),
    ("replica pick", ("gateway/upstreams/",)),
    (
        "request contract, body, header rules",
        ("proxy/contract", "proxy/request_edit", "proxy/body", "proxy/headers"),
    ),
    ("forwarding (Exchange, interrupter)", ("gateway/proxy/forward", "gateway/proxy/interrupt")),
    (
        "routing, handler, error boundary",
        ("gateway/proxy/", "gateway/middleware/", "gateway/app"),
    ),
    ("other gateway code", ("gateway/",)),
]
LOOP = "event loop (uvloop, asyncio, GC)"
# Samples of the worker threads, which py-spy counts even while they wait for work;
# left out of the shares, which are the event loop thread's.
WORKER = "worker threads (left out)"
# The process's entry: every stack starts there, so it names no component.
ENTRY = ("gateway/__main__", "gateway/cli/")


def component(stack: str) -> str:
    """The component of one collapsed stack ("outer (file:line);...;inner (file:line)")."""
    frames = stack.split(";")
    if "Thread._bootstrap " in frames[0]:
        return WORKER
    for frame in reversed(frames):
        if any(fragment in frame for fragment in ENTRY):
            continue
        for name, fragments in COMPONENTS:
            if any(fragment in frame for fragment in fragments):
                return name
    return LOOP


def breakdown(raw: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            counts[component(stack)] += int(count)
    return counts


def profile(  # noqa: PLR0917 (the command line's options, in its order)
    scenario_name: str, scale: float, client: str | None, rate: int, work: Path, keep: Path | None
) -> str:
    scenario = next(s for s in SCENARIOS if s.name == scenario_name)
    requests = max(scenario.concurrency, int(scenario.requests * scale))
    sim_port, gw_port = free_port(), free_port()
    sim_args = ["simulate", "--port", str(sim_port), "--model", MODEL, "--max-num-seqs", "100000"]
    sim_args += ["--ttft-ms", str(scenario.ttft_ms), "--itl-ms", str(scenario.itl_ms)]
    sim = start(["-m", "gateway", *sim_args], LOAD_CORE, work / "sim.log")
    body = request_body(MODEL, scenario.tokens, scenario.stream)
    raw = work / "gateway.raw"
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    try:
        sim_url = f"http://127.0.0.1:{sim_port}"
        wait_ready(f"{sim_url}/health", sim)
        config, api_key = gateway_config(gw_port, sim_url, work)
        if client is not None:
            os.environ["VGW_UPSTREAM_CLIENT"] = client
        gateway = start(gateway_command("default", config), GATEWAY_CORE, work / "gw.log")
        try:
            wait_ready(f"http://127.0.0.1:{gw_port}/v1/models", gateway)
            # Attached once the gateway is up: start-up is not a request's cost.
            command = [TASKSET, "-c", LOAD_CORE, spy, "record", "--nonblocking", "-r", str(rate)]
            command += ["--format", "raw", "--full-filenames", "-o", str(raw)]
            spying = subprocess.Popen(
                [*command, "--pid", str(gateway.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            load = load_for(scenario, f"http://127.0.0.1:{gw_port}", body, requests, api_key)
            result = measure(load, gateway.pid)
            # py-spy writes its samples when interrupted.
            spying.send_signal(signal.SIGINT)
            spying.wait(timeout=60)
        finally:
            stop(gateway)
    finally:
        stop(sim)
    if keep is not None:
        shutil.copy(raw, keep)
    return report(breakdown(raw), result.gateway_us_per_request, result.ok)


def report(counts: Counter[str], us_per_request: float, requests: int) -> str:
    worker = counts.pop(WORKER, 0)
    total = sum(counts.values()) or 1
    lines = [f"{requests} requests, {us_per_request} µs CPU per request (whole process)"]
    lines += [f"{total} samples of the event loop's thread, {worker} of worker threads", ""]
    lines += ["| component | share | µs per request |", "|---|---|---|"]
    for name, count in counts.most_common():
        share = count / total
        lines.append(f"| {name} | {share:.1%} | {share * us_per_request:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenario", default="S3")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument(
        "--client",
        default=None,
        choices=("aiohttp", "native"),
        help="the gateway's upstream_client (its default, native, when not given)",
    )
    parser.add_argument("--rate", type=int, default=500, help="samples per second")
    parser.add_argument("--raw", type=Path, default=None, help="keep py-spy's samples here")
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    with tempfile.TemporaryDirectory(prefix="vgw-profile-") as tmp:
        print(profile(args.scenario, args.scale, args.client, args.rate, Path(tmp), args.raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
