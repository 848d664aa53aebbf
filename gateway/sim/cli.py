"""`vllm-gateway simulate`: the flags, one `SimConfig` built from them, and uvicorn."""

from __future__ import annotations

import argparse
import math
import sys

import uvicorn

from gateway.sim.app import create_sim_app
from gateway.sim.config import DEFAULT_MODEL, ReportedLoad, SimConfig

# Open streams would otherwise hold a SIGTERM'd simulator for as long as they last.
_GRACEFUL_SHUTDOWN_S = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="served model name")
    parser.add_argument("--api-key", help="require `Authorization: Bearer KEY` on /v1 paths")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="delay before the first token")
    parser.add_argument("--itl-ms", type=float, default=0.0, help="delay between tokens")
    parser.add_argument(
        "--prefill-ms-per-1k-tokens",
        type=float,
        default=0.0,
        help="added to TTFT per 1,000 prompt tokens not found in the prefix cache",
    )
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument(
        "--default-max-tokens",
        type=int,
        default=16,
        help='reply length in tokens when none is asked; such a reply ends with EOS ("stop")',
    )
    parser.add_argument(
        "--max-num-seqs", type=int, default=256, help="requests generated at once; others wait"
    )
    parser.add_argument(
        "--max-num-queued-reqs",
        type=int,
        help="refuse (503, as vLLM) a request that would wait behind this many",
    )
    parser.add_argument("--embedding-dim", type=int, default=384)
    parser.add_argument(
        "--deterministic", action="store_true", help="fixed ids and timestamps: same bytes"
    )
    faults = parser.add_argument_group(
        "faults", "defaults for every request; x-sim-* request headers override them"
    )
    faults.add_argument("--fail-status", type=int, help="answer generation requests with STATUS")
    faults.add_argument(
        "--drop-after", type=int, help="close the connection after N streamed content chunks"
    )
    faults.add_argument("--stall-ms", type=float, default=0.0, help="stall before the response")
    load = parser.add_argument_group(
        "reported load", "what /metrics reports; a test changes it at runtime with PUT /sim/load"
    )
    load.add_argument(
        "--report-waiting",
        type=_count,
        default=0,
        metavar="N",
        help="add N to the real vllm:num_requests_waiting",
    )
    load.add_argument(
        "--report-kv-cache",
        type=_fraction,
        metavar="F",
        help="report vllm:kv_cache_usage_perc as F (0..1) instead of the real figure",
    )


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, not {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    # NaN fails the comparison, so only a finite fraction passes.
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, not {text!r}")
    return value


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        model=args.model,
        ttft_ms=args.ttft_ms,
        itl_ms=args.itl_ms,
        api_key=args.api_key,
        max_model_len=args.max_model_len,
        default_max_tokens=args.default_max_tokens,
        max_num_seqs=args.max_num_seqs,
        max_num_queued_reqs=args.max_num_queued_reqs,
        embedding_dim=args.embedding_dim,
        deterministic=args.deterministic,
        fail_status=args.fail_status,
        drop_after=args.drop_after,
        stall_ms=args.stall_ms,
        prefill_ms_per_1k=args.prefill_ms_per_1k_tokens,
        reported_load=ReportedLoad(waiting=args.report_waiting, kv_cache=args.report_kv_cache),
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"vllm-gateway simulate: {exc}", file=sys.stderr)
        return 2
    print(
        f"vLLM SIMULATOR (not a real model) serving '{config.model}' "
        f"on http://{args.host}:{args.port}",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        create_sim_app(config),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_S,
    )
    return 0
